//! Directories that survive a power cut. A new directory entry (a file or a directory
//! created, renamed or removed) is on stable storage only once the directory holding it
//! is fsynced: ext4 may otherwise lose it, and with a lost directory everything below it.
//! The daemons create their data directories through [`create_dir_durable`] before they
//! write anything they acknowledge.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// fsync of a directory: its entries as they are now survive a power cut.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The directory holding `path` ("." for a bare relative name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Creates directory `path` and the missing directories above it so that all of them
/// survive a power cut: the directory holding each one created is fsynced, and so is
/// the one holding `path` even when `path` existed (a crash may have come between its
/// creation and that sync).
pub fn create_dir_durable(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path.to_owned();
    while !p.exists() {
        let up = parent(&p);
        missing.push(p);
        if up == Path::new(".") || up == Path::new("/") {
            break;
        }
        p = up;
    }
    std::fs::create_dir_all(path)?;
    let mut holders: Vec<PathBuf> = missing.iter().map(|m| parent(m)).collect();
    holders.push(parent(path));
    holders.sort();
    holders.dedup();
    // Deepest first: a directory's own entry is synced after what it holds.
    for h in holders.iter().rev() {
        sync_dir(h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = tmp.path().join("a/b/c");
        create_dir_durable(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durable(&deep).expect("again");
        std::fs::write(tmp.path().join("file"), b"x").expect("write");
        assert!(
            create_dir_durable(&tmp.path().join("file")).is_err(),
            "a file is not a directory"
        );
    }
}
