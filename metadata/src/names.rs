//! Validation of names, symlink targets and modes that clients send.

use cairn_common::proto::metadata::Errno;

use crate::errors::{refuse, OpResult};

pub const NAME_BYTES_MAX: usize = 255;
pub const SYMLINK_BYTES_MAX: usize = 4096;
pub const MODE_BITS: u32 = 0o7777;

pub fn check_name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() {
        return Err(refuse(Errno::Einval, "empty file name"));
    }
    if name == b"." || name == b".." {
        return Err(refuse(
            Errno::Einval,
            "`.` and `..` cannot be created, removed or renamed",
        ));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(refuse(
            Errno::Enametoolong,
            format!("file name of {} bytes, at most {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(refuse(Errno::Einval, "file name contains `/` or NUL"));
    }
    Ok(())
}

pub fn check_symlink_target(target: &[u8]) -> OpResult<()> {
    if target.is_empty() {
        return Err(refuse(Errno::Enoent, "empty symlink target"));
    }
    if target.len() > SYMLINK_BYTES_MAX {
        return Err(refuse(
            Errno::Enametoolong,
            format!("symlink target of {} bytes, at most {SYMLINK_BYTES_MAX}", target.len()),
        ));
    }
    if target.contains(&0) {
        return Err(refuse(Errno::Einval, "symlink target contains NUL"));
    }
    Ok(())
}

pub fn check_mode(mode: u32) -> OpResult<()> {
    if mode & !MODE_BITS != 0 {
        return Err(refuse(
            Errno::Einval,
            format!("mode {mode:o} has bits beyond the permission bits {MODE_BITS:o}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert!(check_name("ünïcode name".as_bytes()).is_ok());
    }

    #[test]
    fn modes_beyond_permission_bits_are_refused() {
        assert!(check_mode(0o644).is_ok());
        assert!(check_mode(0o7777).is_ok());
        assert!(check_mode(0o100644).is_err());
    }
}
