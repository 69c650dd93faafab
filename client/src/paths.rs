//! Namespace calls by path, for callers that hold paths rather than inodes (the Python
//! package, `cairnctl file`). Paths are taken from the root whether or not they start
//! with `/`; `.` and empty components are skipped and `..` goes up lexically (as
//! `os.path.normpath` does), never above the root.

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, Create, DirEntry, Errno, FileKind, ReadDir, Rename, Rmdir, Unlink,
};

use crate::{bad_reply, CairnClient, ClientError};

fn refused(errno: Errno, message: String) -> ClientError {
    ClientError::Refused { errno, message }
}

/// The components of `path` after lexical normalization.
pub fn components(path: &str) -> Result<Vec<&str>, ClientError> {
    if path.contains('\0') {
        return Err(refused(Errno::Einval, format!("path {path:?} holds a NUL byte")));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    Ok(parts)
}

impl CairnClient {
    /// The attributes of what `path` names.
    pub async fn resolve(&self, path: &str) -> Result<Attr, ClientError> {
        let parts = components(path)?;
        self.walk(&parts).await
    }

    async fn walk(&self, parts: &[&str]) -> Result<Attr, ClientError> {
        let mut attr = self.getattr(ROOT).await?;
        for part in parts {
            if attr.kind() != FileKind::Directory {
                return Err(refused(Errno::Enotdir, format!("{part:?} is under a non-directory")));
            }
            attr = self.lookup(attr.inode, part.as_bytes()).await?;
        }
        Ok(attr)
    }

    /// The directory holding what `path` names, and its last component.
    pub async fn resolve_parent<'p>(&self, path: &'p str) -> Result<(Attr, &'p str), ClientError> {
        let parts = components(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(refused(Errno::Einval, format!("path {path:?} names the root")));
        };
        let dir = self.walk(dirs).await?;
        if dir.kind() != FileKind::Directory {
            return Err(refused(
                Errno::Enotdir,
                format!("the parent of {path:?} is not a directory"),
            ));
        }
        Ok((dir, name))
    }

    /// Makes the directory `path` and any missing parents (`mkdir -p`); another client
    /// making the same directory at once is no error.
    pub async fn make_dirs(&self, path: &str, mode: u32) -> Result<Attr, ClientError> {
        let mut dir = self.getattr(ROOT).await?;
        for part in components(path)? {
            dir = match self.lookup(dir.inode, part.as_bytes()).await {
                Ok(a) => a,
                Err(e) if e.errno() == Some(Errno::Enoent) => {
                    match self.mkdir(dir.inode, part.as_bytes(), mode).await {
                        Err(e) if e.errno() == Some(Errno::Eexist) => self.lookup(dir.inode, part.as_bytes()).await?,
                        other => other?,
                    }
                }
                Err(e) => return Err(e),
            };
            if dir.kind() != FileKind::Directory {
                return Err(refused(
                    Errno::Enotdir,
                    format!("{part:?} in {path:?} is not a directory"),
                ));
            }
        }
        Ok(dir)
    }

    /// Creates the file `name` in `dir`, or (unless `exclusive`) opens the one there.
    pub async fn create_in(&self, dir: u64, name: &[u8], mode: u32, exclusive: bool) -> Result<Attr, ClientError> {
        self.attr(Op::Create(Create {
            parent: dir,
            name: name.to_vec(),
            mode,
            exclusive,
            ..Create::default()
        }))
        .await
    }

    /// Every entry of directory `dir` (read in pages), in name order.
    pub async fn list_dir(&self, dir: u64) -> Result<Vec<DirEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = match self.meta(Op::Readdir(ReadDir { dir, after, limit: 0 })).await? {
                meta_reply::Result::Entries(page) => page,
                other => return Err(bad_reply(other)),
            };
            let more = !page.done;
            entries.extend(page.entries);
            match entries.last() {
                Some(last) if more => after = last.name.clone(),
                _ => return Ok(entries),
            }
        }
    }

    /// Renames `from` to `to` atomically, replacing a file (or an empty directory) there.
    pub async fn rename_path(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let (src, name) = self.resolve_parent(from).await?;
        let (dst, new_name) = self.resolve_parent(to).await?;
        self.meta(Op::Rename(Rename {
            parent: src.inode,
            name: name.as_bytes().to_vec(),
            new_parent: dst.inode,
            new_name: new_name.as_bytes().to_vec(),
        }))
        .await
        .map(drop)
    }

    /// Removes the file (or symlink) at `path`.
    pub async fn unlink_path(&self, path: &str) -> Result<(), ClientError> {
        let (dir, name) = self.resolve_parent(path).await?;
        self.meta(Op::Unlink(Unlink {
            parent: dir.inode,
            name: name.as_bytes().to_vec(),
        }))
        .await
        .map(drop)
    }

    /// Removes the empty directory at `path`.
    pub async fn rmdir_path(&self, path: &str) -> Result<(), ClientError> {
        let (dir, name) = self.resolve_parent(path).await?;
        self.meta(Op::Rmdir(Rmdir {
            parent: dir.inode,
            name: name.as_bytes().to_vec(),
        }))
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(components("/a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(components("a/b/../c").unwrap(), vec!["a", "c"]);
        assert_eq!(components("/../..").unwrap(), Vec::<&str>::new());
        assert_eq!(components("").unwrap(), Vec::<&str>::new());
        assert!(components("a\0b").is_err());
    }
}
