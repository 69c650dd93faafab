//! Memory that starts on the direct-I/O unit ([`IO_ALIGN_BYTES`]), built on a plain
//! `Vec<u8>` (over-allocated by one unit, used from its first aligned byte) so that no
//! unsafe allocation code is needed: what the frame reader receives shard bytes into,
//! and what the dataserver's O_DIRECT buffers are made of.

use crate::config::IO_ALIGN_BYTES;

/// Room for `len` bytes that start on an alignment boundary: a Vec whose length is that
/// start (the zeroed bytes before it) and whose capacity holds `len` more. Bytes pushed
/// from there on are aligned, and never move (the Vec does not reallocate while they fit).
pub fn aligned_vec(len: usize) -> Vec<u8> {
    let align = IO_ALIGN_BYTES as usize;
    let mut vec: Vec<u8> = Vec::with_capacity(len + align);
    let start = vec.as_ptr().align_offset(align);
    vec.resize(start, 0);
    vec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_after_the_start_is_aligned_and_fits() {
        for len in [0, 1, 4096, 3 * 4096 + 7] {
            let vec = aligned_vec(len);
            let start = vec.len();
            assert!(start < IO_ALIGN_BYTES as usize);
            assert!(vec.iter().all(|&b| b == 0));
            assert_eq!((vec.as_ptr() as usize + start) % IO_ALIGN_BYTES as usize, 0);
            assert!(vec.capacity() >= start + len);
        }
    }
}
