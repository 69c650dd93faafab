//! Reed-Solomon erasure coding of stripes (`reed-solomon-simd`): a stripe is k data
//! shards plus m parity shards, and any k of the k+m rebuild the data.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ErasureError {
    #[error("erasure code {k}+{m} is not supported")]
    Unsupported { k: usize, m: usize },
    #[error("stripe of {len} bytes does not fit {k} shards of {unit} bytes")]
    StripeTooLarge { len: usize, k: usize, unit: usize },
    #[error("got {got} shards, a {k}+{m} stripe has {}", k + m)]
    WrongShardCount { got: usize, k: usize, m: usize },
    #[error("only {present} shards of the stripe are available, {needed} are needed")]
    TooFewShards { present: usize, needed: usize },
    #[error("shard {index} is {got} bytes, the stripe's shards are {want}")]
    ShardLength { index: usize, got: usize, want: usize },
    #[error("reed-solomon: {0}")]
    Codec(String),
}

thread_local! {
    /// One encoder per thread, reset for each stripe: its working space (about k shards)
    /// is kept, not allocated and zeroed again for every stripe. Stripes are encoded on
    /// the runtime's few worker threads, so a process keeps a few of them.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
}

/// A k+m code. Cheap to copy; a decoder's working space is allocated per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErasureCode {
    data_shards: usize,
    parity_shards: usize,
}

impl ErasureCode {
    pub fn new(data_shards: usize, parity_shards: usize) -> Result<Self, ErasureError> {
        if data_shards == 0 || parity_shards == 0 || !ReedSolomonEncoder::supports(data_shards, parity_shards) {
            return Err(ErasureError::Unsupported {
                k: data_shards,
                m: parity_shards,
            });
        }
        Ok(ErasureCode {
            data_shards,
            parity_shards,
        })
    }

    pub fn data_shards(&self) -> usize {
        self.data_shards
    }

    pub fn parity_shards(&self) -> usize {
        self.parity_shards
    }

    pub fn total_shards(&self) -> usize {
        self.data_shards + self.parity_shards
    }

    /// Length of each shard of a stripe holding `data_len` bytes: the data split over k
    /// shards, rounded up to an even length (the coder works on 16-bit words). A full
    /// stripe's shards are one shard unit; a short last stripe gets short shards.
    pub fn shard_len(&self, data_len: usize) -> usize {
        data_len.div_ceil(self.data_shards).next_multiple_of(2).max(2)
    }

    /// Splits `data` into k data shards and computes m parity shards. Full data shards
    /// are slices of `data` (no copy); only the tail is copied to pad it.
    pub fn encode(&self, data: &Bytes, unit: usize) -> Result<Vec<Bytes>, ErasureError> {
        if data.len() > unit.saturating_mul(self.data_shards) {
            return Err(ErasureError::StripeTooLarge {
                len: data.len(),
                k: self.data_shards,
                unit,
            });
        }
        let shard_len = self.shard_len(data.len());
        let mut shards: Vec<Bytes> = (0..self.data_shards)
            .map(|i| {
                let start = (i * shard_len).min(data.len());
                let end = ((i + 1) * shard_len).min(data.len());
                if end - start == shard_len {
                    data.slice(start..end)
                } else {
                    let mut padded = BytesMut::zeroed(shard_len);
                    padded[..end - start].copy_from_slice(&data[start..end]);
                    padded.freeze()
                }
            })
            .collect();
        let codec = |e: reed_solomon_simd::Error| ErasureError::Codec(e.to_string());
        let parity = ENCODER.with_borrow_mut(|kept| -> Result<Vec<Bytes>, reed_solomon_simd::Error> {
            let encoder = match kept {
                Some(e) => {
                    e.reset(self.data_shards, self.parity_shards, shard_len)?;
                    e
                }
                None => kept.insert(ReedSolomonEncoder::new(
                    self.data_shards,
                    self.parity_shards,
                    shard_len,
                )?),
            };
            for shard in &shards {
                encoder.add_original_shard(shard)?;
            }
            Ok(encoder.encode()?.recovery_iter().map(Bytes::copy_from_slice).collect())
        });
        shards.extend(parity.map_err(codec)?);
        Ok(shards)
    }

    /// Every shard of a stripe, rebuilt from any k of them (`None` for a missing one):
    /// what a repair writes in place of a lost or corrupt shard.
    pub fn reconstruct(&self, shards: &[Option<Bytes>]) -> Result<Vec<Bytes>, ErasureError> {
        let shard_len = shards.iter().flatten().map(Bytes::len).next().unwrap_or(0);
        let data = self.decode(shards, shard_len * self.data_shards)?;
        let mut full = BytesMut::with_capacity(shard_len * self.data_shards);
        for d in data {
            full.extend_from_slice(&d);
        }
        self.encode(&full.freeze(), shard_len)
    }

    /// Rebuilds the stripe's `data_len` bytes from any k of its k+m shards (`None` for
    /// a missing one). Returns the data shards' bytes in order, trimmed to `data_len`;
    /// when every data shard is present nothing is decoded or copied.
    pub fn decode(&self, shards: &[Option<Bytes>], data_len: usize) -> Result<Vec<Bytes>, ErasureError> {
        let (k, m) = (self.data_shards, self.parity_shards);
        if shards.len() != k + m {
            return Err(ErasureError::WrongShardCount {
                got: shards.len(),
                k,
                m,
            });
        }
        let shard_len = self.shard_len(data_len);
        for (index, shard) in shards.iter().enumerate() {
            if let Some(s) = shard {
                if s.len() != shard_len {
                    return Err(ErasureError::ShardLength {
                        index,
                        got: s.len(),
                        want: shard_len,
                    });
                }
            }
        }
        let present = shards.iter().filter(|s| s.is_some()).count();
        if present < k {
            return Err(ErasureError::TooFewShards { present, needed: k });
        }
        let mut data: Vec<Option<Bytes>> = shards[..k].to_vec();
        if data.iter().any(Option::is_none) {
            let codec = |e: reed_solomon_simd::Error| ErasureError::Codec(e.to_string());
            let mut decoder = ReedSolomonDecoder::new(k, m, shard_len).map_err(codec)?;
            for (i, s) in shards.iter().enumerate() {
                match s {
                    Some(s) if i < k => decoder.add_original_shard(i, s).map_err(codec)?,
                    Some(s) => decoder.add_recovery_shard(i - k, s).map_err(codec)?,
                    None => {}
                }
            }
            let result = decoder.decode().map_err(codec)?;
            for (i, restored) in result.restored_original_iter() {
                data[i] = Some(Bytes::copy_from_slice(restored));
            }
        }
        let mut remaining = data_len;
        let mut out = Vec::with_capacity(k);
        for shard in data {
            let shard = shard.ok_or(ErasureError::TooFewShards { present, needed: k })?;
            let take = remaining.min(shard_len);
            remaining -= take;
            out.push(shard.slice(..take));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn joined(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    proptest! {
        /// Any k of the k+m shards give back the original bytes.
        #[test]
        fn any_k_shards_rebuild_the_stripe(
            k in 1usize..8, m in 1usize..4, len in 0usize..5000,
            seed in any::<u64>(), lost in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let code = ErasureCode::new(k, m).unwrap();
            let data: Bytes = (0..len).map(|i| (i as u64 ^ seed).wrapping_mul(31) as u8).collect::<Vec<_>>().into();
            let shards = code.encode(&data, 8192).unwrap();
            prop_assert_eq!(shards.len(), k + m);
            let mut have: Vec<Option<Bytes>> = shards.into_iter().map(Some).collect();
            for idx in lost.iter().take(m) {
                have[idx.index(k + m)] = None;
            }
            prop_assert_eq!(joined(&code.decode(&have, len).unwrap()), data.to_vec());
            // And every shard, parity included, comes back as it was encoded.
            if have.iter().any(Option::is_some) {
                prop_assert_eq!(code.reconstruct(&have).unwrap(), code.encode(&data, 8192).unwrap());
            }
        }
    }

    #[test]
    fn the_kept_encoder_leaves_nothing_behind_between_stripes() {
        let wide = ErasureCode::new(4, 2).unwrap();
        let narrow = ErasureCode::new(2, 1).unwrap();
        let big: Bytes = (0..40_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>().into();
        let first = wide.encode(&big, 16_384).unwrap();
        // Another code, a short stripe, and a stripe the coder rejects, in between.
        narrow.encode(&Bytes::from_static(b"short"), 16).unwrap();
        wide.encode(&big.slice(..1000), 16_384).unwrap();
        assert!(wide.encode(&big, 100).is_err());
        assert_eq!(wide.encode(&big, 16_384).unwrap(), first);
        // The same parity a fresh encoder computes.
        let mut fresh = ReedSolomonEncoder::new(4, 2, first[0].len()).unwrap();
        for shard in &first[..4] {
            fresh.add_original_shard(shard).unwrap();
        }
        let parity: Vec<Vec<u8>> = fresh.encode().unwrap().recovery_iter().map(<[u8]>::to_vec).collect();
        assert_eq!(parity, vec![first[4].to_vec(), first[5].to_vec()]);
    }

    #[test]
    fn default_code_survives_losing_any_two_of_six() {
        let code = ErasureCode::new(4, 2).unwrap();
        let unit = 1 << 20;
        let data: Bytes = (0..4 * unit).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let shards = code.encode(&data, unit).unwrap();
        assert!(shards.iter().all(|s| s.len() == unit));
        for a in 0..6 {
            for b in a + 1..6 {
                let mut have: Vec<Option<Bytes>> = shards.iter().cloned().map(Some).collect();
                have[a] = None;
                have[b] = None;
                assert_eq!(
                    joined(&code.decode(&have, data.len()).unwrap()),
                    data.to_vec(),
                    "lost {a},{b}"
                );
            }
        }
        let mut have: Vec<Option<Bytes>> = shards.iter().cloned().map(Some).collect();
        have[0] = None;
        have[1] = None;
        have[5] = None;
        assert_eq!(
            code.decode(&have, data.len()),
            Err(ErasureError::TooFewShards { present: 3, needed: 4 })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(ErasureCode::new(0, 2).is_err());
        assert!(ErasureCode::new(4, 0).is_err());
        let code = ErasureCode::new(4, 2).unwrap();
        let data = Bytes::from(vec![0u8; 100]);
        assert!(matches!(
            code.encode(&data, 10),
            Err(ErasureError::StripeTooLarge { .. })
        ));
        let shards: Vec<Option<Bytes>> = code.encode(&data, 64).unwrap().into_iter().map(Some).collect();
        assert!(matches!(
            code.decode(&shards[..5], 100),
            Err(ErasureError::WrongShardCount { .. })
        ));
        assert!(matches!(
            code.decode(&shards, 1000),
            Err(ErasureError::ShardLength { .. })
        ));
    }
}
