//! Extended attributes, kept in the inode's record sorted by name: a file with none pays
//! nothing, and `getxattr` and `listxattr` read the one record `getattr` reads. The
//! limits are Linux's for one attribute and keep a record small; ACLs (`system.`) are not
//! supported, so nothing believes one is enforced.

use cairn_common::proto::metadata::{Errno, SetXattr};

use crate::errors::{refuse, OpResult};
use crate::records::{InodeRecord, Xattr};

/// Linux's XATTR_NAME_MAX.
pub const NAME_BYTES_MAX: usize = 255;
/// Linux's XATTR_SIZE_MAX.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Every name and value of one inode together.
pub const TOTAL_BYTES_MAX: usize = 64 * 1024;
const NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

pub fn check_name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() || name.contains(&0) {
        return Err(refuse(Errno::Einval, "an attribute name is 1 to 255 bytes with no NUL"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(refuse(Errno::Erange, format!("attribute name of {} bytes", name.len())));
    }
    if !NAMESPACES
        .iter()
        .any(|ns| name.starts_with(ns) && name.len() > ns.len())
    {
        return Err(refuse(
            Errno::Eopnotsupp,
            "only user., trusted. and security. attributes are supported",
        ));
    }
    Ok(())
}

fn find(rec: &InodeRecord, name: &[u8]) -> Result<usize, usize> {
    rec.xattrs.binary_search_by(|x| x.name.as_slice().cmp(name))
}

pub fn set(rec: &mut InodeRecord, s: SetXattr) -> OpResult<()> {
    check_name(&s.name)?;
    if s.create && s.replace {
        return Err(refuse(Errno::Einval, "create and replace at once"));
    }
    if s.value.len() > VALUE_BYTES_MAX {
        return Err(refuse(
            Errno::E2big,
            format!("attribute value of {} bytes", s.value.len()),
        ));
    }
    let at = find(rec, &s.name);
    let kept: usize = rec
        .xattrs
        .iter()
        .filter(|x| x.name != s.name)
        .map(|x| x.name.len() + x.value.len())
        .sum();
    if kept + s.name.len() + s.value.len() > TOTAL_BYTES_MAX {
        return Err(refuse(
            Errno::Enospc,
            format!("an inode's attributes hold at most {TOTAL_BYTES_MAX} bytes"),
        ));
    }
    match at {
        Ok(_) if s.create => Err(refuse(Errno::Eexist, "the attribute exists")),
        Err(_) if s.replace => Err(refuse(Errno::Enodata, "no such attribute")),
        Ok(i) => {
            rec.xattrs[i].value = s.value;
            Ok(())
        }
        Err(i) => {
            rec.xattrs.insert(
                i,
                Xattr {
                    name: s.name,
                    value: s.value,
                },
            );
            Ok(())
        }
    }
}

pub fn remove(rec: &mut InodeRecord, name: &[u8]) -> OpResult<()> {
    check_name(name)?;
    let i = find(rec, name).map_err(|_| refuse(Errno::Enodata, "no such attribute"))?;
    rec.xattrs.remove(i);
    Ok(())
}

pub fn get(rec: &InodeRecord, name: &[u8]) -> OpResult<Vec<u8>> {
    check_name(name)?;
    find(rec, name)
        .map(|i| rec.xattrs[i].value.clone())
        .map_err(|_| refuse(Errno::Enodata, "no such attribute"))
}

pub fn names(rec: &InodeRecord) -> Vec<Vec<u8>> {
    rec.xattrs.iter().map(|x| x.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_op(name: &str, value: &[u8], create: bool, replace: bool) -> SetXattr {
        SetXattr {
            inode: 2,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            create,
            replace,
        }
    }

    fn errno(r: OpResult<()>) -> Errno {
        match r {
            Err(crate::errors::OpError::Refused(e)) => e.errno(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attributes_follow_the_flags_and_limits_of_linux() {
        let mut rec = InodeRecord::default();
        set(&mut rec, set_op("user.b", b"2", false, false)).expect("set");
        set(&mut rec, set_op("user.a", b"1", true, false)).expect("create");
        assert_eq!(names(&rec), vec![b"user.a".to_vec(), b"user.b".to_vec()]);
        assert_eq!(errno(set(&mut rec, set_op("user.a", b"x", true, false))), Errno::Eexist);
        assert_eq!(
            errno(set(&mut rec, set_op("user.c", b"x", false, true))),
            Errno::Enodata
        );
        set(&mut rec, set_op("user.a", b"one", false, true)).expect("replace");
        assert_eq!(get(&rec, b"user.a").expect("get"), b"one");
        assert_eq!(errno(get(&rec, b"user.zz").map(drop)), Errno::Enodata);
        for bad in ["system.posix_acl_access", "user.", "other.x", "user.a\0b"] {
            assert!(set(&mut rec, set_op(bad, b"", false, false)).is_err(), "{bad:?}");
        }
        assert_eq!(
            errno(set(
                &mut rec,
                set_op(&format!("user.{}", "n".repeat(251)), b"", false, false)
            )),
            Errno::Erange
        );
        let big = vec![7u8; VALUE_BYTES_MAX + 1];
        assert_eq!(
            errno(set(&mut rec, set_op("user.big", &big, false, false))),
            Errno::E2big
        );
        let half = vec![7u8; TOTAL_BYTES_MAX / 2];
        set(&mut rec, set_op("user.h1", &half, false, false)).expect("half");
        assert_eq!(
            errno(set(&mut rec, set_op("user.h2", &half, false, false))),
            Errno::Enospc
        );
        // Replacing a large value with another of the same size fits.
        set(&mut rec, set_op("user.h1", &half, false, true)).expect("same size again");
        remove(&mut rec, b"user.h1").expect("remove");
        assert_eq!(errno(remove(&mut rec, b"user.h1")), Errno::Enodata);
        assert_eq!(names(&rec).len(), 2);
    }
}
