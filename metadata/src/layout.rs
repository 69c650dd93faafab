//! Checks on the file layouts writers commit.

use std::collections::HashSet;

use cairn_common::namespace::{FILE_BYTES_MAX, INLINE_BYTES_MAX, STRIPE_ID_BYTES};
use cairn_common::proto::metadata::{Errno, Layout};

use crate::errors::{refuse, OpResult};

const DATA_SHARDS_MAX: u32 = 32;
const PARITY_SHARDS_MAX: u32 = 16;
const SHARD_UNIT_BYTES_MAX: u32 = 64 << 20;

pub fn check_size(size: u64) -> OpResult<()> {
    if size > FILE_BYTES_MAX {
        return Err(refuse(Errno::Efbig, format!("size {size} beyond {FILE_BYTES_MAX}")));
    }
    Ok(())
}

/// A committed layout must describe shards that can exist: ids of the right length,
/// indices inside the code, stripes in order and inside the file's size.
pub fn check_layout(l: &Layout, size: u64) -> OpResult<()> {
    check_size(size)?;
    let bad = |m: String| Err(refuse(Errno::Einval, m));
    if l.inline_data.len() > INLINE_BYTES_MAX {
        return bad(format!(
            "{} inline bytes, at most {INLINE_BYTES_MAX}",
            l.inline_data.len()
        ));
    }
    if l.inline_data.len() as u64 > size {
        return bad("inline bytes beyond the file size".into());
    }
    if !l.stripes.is_empty() && !l.inline_data.is_empty() {
        return bad("a layout has either inline bytes or stripes, not both".into());
    }
    check_stripes(l, size)
}

/// The stripes of `l` and the code it names: shards that can exist, stripes in file order
/// and inside `size` (the checks a commit of changed stripes makes too).
pub fn check_stripes(l: &Layout, size: u64) -> OpResult<()> {
    let bad = |m: String| Err(refuse(Errno::Einval, m));
    if l.stripes.is_empty() {
        return Ok(());
    }
    let (k, m) = (l.data_shards, l.parity_shards);
    if !(1..=DATA_SHARDS_MAX).contains(&k) || !(1..=PARITY_SHARDS_MAX).contains(&m) {
        return bad(format!(
            "code {k}+{m} outside 1..={DATA_SHARDS_MAX} + 1..={PARITY_SHARDS_MAX}"
        ));
    }
    if l.shard_unit_bytes == 0 || l.shard_unit_bytes > SHARD_UNIT_BYTES_MAX {
        return bad(format!(
            "shard unit {} outside 1..={SHARD_UNIT_BYTES_MAX}",
            l.shard_unit_bytes
        ));
    }
    let stripe_bytes_max = u64::from(k) * u64::from(l.shard_unit_bytes);
    let mut end = 0u64;
    for (i, s) in l.stripes.iter().enumerate() {
        if s.stripe_id.len() != STRIPE_ID_BYTES {
            return bad(format!("stripe {i}: id of {} bytes", s.stripe_id.len()));
        }
        if s.length == 0 || s.length > stripe_bytes_max {
            return bad(format!(
                "stripe {i}: length {} outside 1..={stripe_bytes_max}",
                s.length
            ));
        }
        if s.offset < end {
            return bad(format!("stripe {i}: offset {} overlaps the stripe before", s.offset));
        }
        end = s.offset.saturating_add(s.length);
        if end > size {
            return bad(format!("stripe {i}: ends at {end}, beyond the file size {size}"));
        }
        let n = s.shards.len() as u32;
        if n < k || n > k + m {
            return bad(format!("stripe {i}: {n} shards for a {k}+{m} code"));
        }
        let mut seen = HashSet::new();
        for sh in &s.shards {
            if sh.index >= k + m || !seen.insert(sh.index) {
                return bad(format!(
                    "stripe {i}: shard index {} repeated or outside the code",
                    sh.index
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cairn_common::namespace::truncate_layout;
    use cairn_common::proto::metadata::{ShardLocation, Stripe};

    use super::*;

    fn stripe(offset: u64, length: u64) -> Stripe {
        Stripe {
            stripe_id: vec![7; 16],
            offset,
            length,
            shards: (0..6)
                .map(|i| ShardLocation {
                    index: i,
                    dataserver: i + 1,
                    crc32c: 0,
                })
                .collect(),
        }
    }

    fn layout(stripes: Vec<Stripe>) -> Layout {
        Layout {
            data_shards: 4,
            parity_shards: 2,
            shard_unit_bytes: 1 << 20,
            stripes,
            ..Layout::default()
        }
    }

    #[test]
    fn valid_layouts_pass_and_broken_ones_are_refused() {
        let mb4 = 4 << 20;
        assert!(check_layout(&layout(vec![stripe(0, mb4), stripe(mb4, 10)]), mb4 + 10).is_ok());
        // Overlap, beyond size, too long, wrong id, repeated index.
        assert!(check_layout(&layout(vec![stripe(0, mb4), stripe(mb4 - 1, 10)]), mb4 + 10).is_err());
        assert!(check_layout(&layout(vec![stripe(0, 10)]), 9).is_err());
        assert!(check_layout(&layout(vec![stripe(0, mb4 + 1)]), mb4 + 1).is_err());
        let mut s = stripe(0, 10);
        s.stripe_id.pop();
        assert!(check_layout(&layout(vec![s]), 10).is_err());
        let mut s = stripe(0, 10);
        s.shards[1].index = 0;
        assert!(check_layout(&layout(vec![s]), 10).is_err());
        assert!(check_size(FILE_BYTES_MAX + 1).is_err());
    }

    #[test]
    fn truncate_drops_and_shortens_stripes() {
        let l = layout(vec![stripe(0, 100), stripe(100, 100), stripe(200, 50)]);
        let t = truncate_layout(&l, 150);
        assert_eq!(t.stripes.len(), 2);
        assert_eq!(t.stripes[1].length, 50);
        assert_eq!(truncate_layout(&l, 1000).stripes.len(), 3);
        assert!(truncate_layout(&l, 0).stripes.is_empty());
    }
}
