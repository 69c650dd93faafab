//! Namespace calls by path, for callers that hold paths rather than inodes (the Python
//! package, `cairnctl file`). Paths are taken from the root whether or not they start
//! with `/`; `.` and empty components are skipped and `..` goes up lexically (as
//! `os.path.normpath` does), never above the root.

use cairn_common::namespace::ROOT;
use cairn_common::proto::metadata::{
    meta_reply, meta_request::Op, Attr, Create, DirEntry, Errno, FileKind, ReadDir, Rename, Rmdir, Unlink,
};

use crate::{bad_reply, CairnClient, ClientError};

/// The components of `path` after lexical normalization.
pub fn components(path: &str) -> Result<Vec<&str>, ClientError> {
    if path.contains('\0') {
        return Err(ClientError::refused(
            Errno::Einval,
            format!("path {path:?} holds a NUL byte"),
        ));
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
        match parts.split_last() {
            None => self.getattr(ROOT).await,
            Some((name, dirs)) => self.lookup(self.walk(dirs).await?, name.as_bytes()).await,
        }
    }

    /// The inode of the directory `parts` names, by lookups from the root (the metadata
    /// group refuses a lookup under a non-directory with ENOTDIR).
    async fn walk(&self, parts: &[&str]) -> Result<u64, ClientError> {
        let mut inode = ROOT;
        for part in parts {
            inode = self.lookup(inode, part.as_bytes()).await?.inode;
        }
        Ok(inode)
    }

    /// The inode of the directory holding what `path` names, and its last component.
    pub async fn resolve_parent<'p>(&self, path: &'p str) -> Result<(u64, &'p str), ClientError> {
        let parts = components(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(ClientError::refused(
                Errno::Einval,
                format!("path {path:?} names the root"),
            ));
        };
        Ok((self.walk(dirs).await?, name))
    }

    /// Makes the directory `path` and any missing parents (`mkdir -p`); another client
    /// making the same directory at once is no error. Returns its inode.
    pub async fn make_dirs(&self, path: &str, mode: u32) -> Result<u64, ClientError> {
        let mut dir = ROOT;
        for part in components(path)? {
            let attr = match self.lookup(dir, part.as_bytes()).await {
                Ok(a) => a,
                Err(e) if e.errno() == Some(Errno::Enoent) => match self.mkdir(dir, part.as_bytes(), mode).await {
                    Err(e) if e.errno() == Some(Errno::Eexist) => self.lookup(dir, part.as_bytes()).await?,
                    other => other?,
                },
                Err(e) => return Err(e),
            };
            if attr.kind() != FileKind::Directory {
                return Err(ClientError::refused(
                    Errno::Enotdir,
                    format!("{part:?} in {path:?} is not a directory"),
                ));
            }
            dir = attr.inode;
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

    /// Like [`Self::create_in`], and says whether the file is new: the create is asked
    /// as exclusive first, so a success means this call made it (empty, nothing to read
    /// before writing it); without `exclusive`, a name taken meanwhile is opened as it is.
    pub async fn create_or_open(
        &self,
        dir: u64,
        name: &[u8],
        mode: u32,
        exclusive: bool,
    ) -> Result<(Attr, bool), ClientError> {
        match self.create_in(dir, name, mode, true).await {
            Ok(attr) => Ok((attr, true)),
            Err(e) if !exclusive && e.errno() == Some(Errno::Eexist) => {
                Ok((self.create_in(dir, name, mode, false).await?, false))
            }
            Err(e) => Err(e),
        }
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
            parent: src,
            name: name.as_bytes().to_vec(),
            new_parent: dst,
            new_name: new_name.as_bytes().to_vec(),
            ..Rename::default()
        }))
        .await
        .map(drop)
    }

    /// Removes the file (or symlink) at `path`.
    pub async fn unlink_path(&self, path: &str) -> Result<(), ClientError> {
        let (dir, name) = self.resolve_parent(path).await?;
        self.meta(Op::Unlink(Unlink {
            parent: dir,
            name: name.as_bytes().to_vec(),
        }))
        .await
        .map(drop)
    }

    /// Removes the empty directory at `path`.
    pub async fn rmdir_path(&self, path: &str) -> Result<(), ClientError> {
        let (dir, name) = self.resolve_parent(path).await?;
        self.meta(Op::Rmdir(Rmdir {
            parent: dir,
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
