//! Identifiers. Each is a distinct type so a node id is never passed where a shard id
//! belongs; their text forms are what logs, CLIs and config files show.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A node (dataserver, metadata voter or logic node) of one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// A client request; retries carry the same id so they apply at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A file or directory in the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u64);

/// One stripe of erasure-coded data. Random 128-bit values, so logic nodes can mint them
/// without coordination and never collide in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StripeId(pub u128);

/// A shard: the `index`-th of the k+m shards of a stripe (data shards first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId {
    pub stripe: StripeId,
    pub index: u8,
}

/// A failure domain: a data hall (power, cooling, network). Names are short and
/// limited to `[a-z0-9_-]` so they are safe in paths, metric labels and log lines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HallId(String);

/// The longest hall name accepted.
pub const HALL_NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("hall name must be 1 to {HALL_NAME_BYTES_MAX} characters of a-z, 0-9, '-' or '_', got {0:?}")]
    BadHall(String),
    #[error("shard id must be 32 hex digits, '-', and an index 0-255, got {0:?}")]
    BadShard(String),
}

impl StripeId {
    /// A fresh random stripe id.
    pub fn random() -> Self {
        StripeId(rand::random())
    }
}

impl ShardId {
    /// Bytes of the fixed-width binary form used in keys: stripe (big-endian) then index,
    /// so keys of one stripe sort together.
    pub const ENCODED_BYTES: usize = 17;

    pub fn new(stripe: StripeId, index: u8) -> Self {
        ShardId { stripe, index }
    }

    pub fn to_bytes(self) -> [u8; Self::ENCODED_BYTES] {
        let mut out = [0u8; Self::ENCODED_BYTES];
        out[..16].copy_from_slice(&self.stripe.0.to_be_bytes());
        out[16] = self.index;
        out
    }

    /// Parses the binary form; `None` unless `bytes` is exactly `ENCODED_BYTES` long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::ENCODED_BYTES] = bytes.try_into().ok()?;
        let mut stripe = [0u8; 16];
        stripe.copy_from_slice(&bytes[..16]);
        Some(ShardId::new(StripeId(u128::from_be_bytes(stripe)), bytes[16]))
    }
}

impl HallId {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= HALL_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(HallId(name))
        } else {
            Err(IdError::BadHall(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{:016x}", self.0)
    }
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino-{}", self.0)
    }
}

impl fmt::Display for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stripe, self.index)
    }
}

impl FromStr for ShardId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadShard(s.to_owned());
        let (stripe, index) = s.split_once('-').ok_or_else(bad)?;
        if stripe.len() != 32 || !stripe.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let stripe = u128::from_str_radix(stripe, 16).map_err(|_| bad())?;
        let index = index.parse::<u8>().map_err(|_| bad())?;
        Ok(ShardId::new(StripeId(stripe), index))
    }
}

impl fmt::Display for HallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shard_id_round_trips(stripe in any::<u128>(), index in any::<u8>()) {
            let id = ShardId::new(StripeId(stripe), index);
            prop_assert_eq!(ShardId::from_bytes(&id.to_bytes()), Some(id));
            prop_assert_eq!(id.to_string().parse::<ShardId>(), Ok(id));
        }

        #[test]
        fn shard_id_parse_never_panics(s in ".{0,60}") {
            let _ = s.parse::<ShardId>();
        }
    }

    #[test]
    fn shard_id_rejects_bad_text() {
        for bad in [
            "",
            "-1",
            "abc-1",
            &format!("{}-256", "0".repeat(32)),
            &format!("{}-", "0".repeat(32)),
            &format!("+{}-1", "0".repeat(31)),
        ] {
            assert!(bad.parse::<ShardId>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ShardId::from_bytes(&[0; 16]), None);
    }

    #[test]
    fn hall_names_are_validated() {
        assert!(HallId::new("hall-a_1").is_ok());
        for bad in ["", "Hall", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(HallId::new(bad), Err(IdError::BadHall(bad.to_owned())));
        }
    }
}
