//! Buffers aligned for O_DIRECT, built on [`aligned_vec`] and convertible into `Bytes`
//! without a copy; `UnfilledBuf`, the same memory before a read fills it; and
//! `AlignedBytes`, bytes known to be aligned, which is what a write takes.

use bytes::Bytes;
use cairn_common::aligned::aligned_vec;
use cairn_common::config::IO_ALIGN_BYTES;

const ALIGN: usize = IO_ALIGN_BYTES as usize;

#[derive(Debug)]
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

/// Room for an aligned read of `len` bytes, not zeroed: zeroing memory the kernel is
/// about to overwrite costs as much CPU as checking its checksums.
#[derive(Debug)]
pub struct UnfilledBuf {
    /// Holds the bytes before the aligned start; the read lands in its spare capacity.
    vec: Vec<u8>,
    len: usize,
}

impl UnfilledBuf {
    pub fn new(len: usize) -> UnfilledBuf {
        debug_assert_eq!(len % ALIGN, 0);
        UnfilledBuf {
            vec: aligned_vec(len),
            len,
        }
    }

    /// The bytes a read must transfer to fill it.
    pub fn wanted(&self) -> usize {
        self.len
    }

    /// Where the kernel writes the `len` bytes: aligned, and valid while `self` lives
    /// (the Vec never reallocates).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.vec.spare_capacity_mut().as_mut_ptr().cast()
    }

    /// The buffer once a read has filled it.
    ///
    /// # Safety
    /// All `len` bytes at `as_mut_ptr()` must have been written (a read that transferred
    /// exactly `len` bytes).
    pub unsafe fn assume_filled(mut self) -> AlignedBuf {
        let start = self.vec.len();
        // SAFETY: the capacity is at least start + len (see `new`), and the caller
        // guarantees the `len` bytes after `start` are initialised.
        unsafe { self.vec.set_len(start + self.len) };
        AlignedBuf {
            vec: self.vec,
            start,
            len: self.len,
        }
    }
}

/// Whether `data` starts on the direct-I/O unit and is a whole number of units long.
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN) && data.len().is_multiple_of(ALIGN)
}

/// Bytes that start on the direct-I/O unit and are a whole number of units long.
#[derive(Clone, Debug)]
pub struct AlignedBytes(Bytes);

impl AlignedBytes {
    /// `data` padded with zeros to the unit: as it is when it is aligned already (a
    /// shard received by `frame::AlignedFrameReader` whose length is a whole number of
    /// units), else copied.
    pub fn padded(data: Bytes) -> AlignedBytes {
        if is_aligned(&data) {
            AlignedBytes(data)
        } else {
            AlignedBytes(AlignedBuf::padded_copy(&data).into_bytes())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `len` rounded up to the direct-I/O unit.
pub fn padded_len(len: u64) -> u64 {
    len.next_multiple_of(ALIGN as u64)
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (a multiple of the alignment).
    pub fn zeroed(len: usize) -> AlignedBuf {
        debug_assert_eq!(len % ALIGN, 0);
        let mut vec = aligned_vec(len);
        let start = vec.len();
        vec.resize(start + len, 0);
        AlignedBuf { vec, start, len }
    }

    /// `data` copied into an aligned buffer padded with zeros to the alignment. Only the
    /// bytes before the aligned start and the padding are zeroed: a shard is written once,
    /// not zeroed first and then overwritten.
    pub fn padded_copy(data: &[u8]) -> AlignedBuf {
        let len = padded_len(data.len() as u64) as usize;
        let UnfilledBuf { mut vec, .. } = UnfilledBuf::new(len);
        let start = vec.len();
        vec.extend_from_slice(data);
        vec.resize(start + len, 0);
        AlignedBuf { vec, start, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }

    /// Pointer for the kernel; valid while `self` lives (the Vec never reallocates).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.vec).slice(self.start..self.start + self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_aligned_and_padded() {
        let mut b = AlignedBuf::padded_copy(b"hello");
        assert_eq!(b.len(), ALIGN);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert_eq!(&b.as_slice()[..6], b"hello\0");
        let bytes = b.into_bytes();
        assert_eq!(bytes.len(), ALIGN);
        assert_eq!(&bytes[..5], b"hello");
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(4097), 8192);
        for n in [ALIGN, 3 * ALIGN + 1] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            let b = AlignedBuf::padded_copy(&data);
            assert_eq!(b.len(), padded_len(n as u64) as usize);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(&b.as_slice()[..n], &data[..]);
            assert!(b.as_slice()[n..].iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn an_unfilled_buffer_is_aligned_and_becomes_what_was_written() {
        let mut b = UnfilledBuf::new(2 * ALIGN);
        assert_eq!(b.wanted(), 2 * ALIGN);
        let at = b.as_mut_ptr();
        assert_eq!(at as usize % ALIGN, 0);
        // SAFETY: `at` has room for 2 * ALIGN bytes, all written here.
        unsafe { std::ptr::write_bytes(at, 9, 2 * ALIGN) };
        // SAFETY: every byte was written just above.
        let filled = unsafe { b.assume_filled() };
        assert_eq!(filled.as_slice().as_ptr(), at.cast_const());
        assert!(filled.as_slice().iter().all(|&x| x == 9));
        assert_eq!(filled.into_bytes().len(), 2 * ALIGN);
    }

    #[test]
    fn aligned_bytes_are_kept_and_others_copied() {
        let aligned = AlignedBuf::padded_copy(&[7u8; 2 * ALIGN]).into_bytes();
        let kept = AlignedBytes::padded(aligned.clone());
        assert_eq!(kept.as_slice().as_ptr(), aligned.as_ptr());
        for data in [aligned.slice(1..), aligned.slice(..ALIGN + 1), aligned.slice(..0)] {
            let copy = AlignedBytes::padded(data.clone());
            assert!(is_aligned(copy.as_slice()));
            assert_eq!(copy.len(), padded_len(data.len() as u64) as usize);
            assert_eq!(&copy.as_slice()[..data.len()], &data[..]);
            assert!(copy.as_slice()[data.len()..].iter().all(|&x| x == 0));
        }
    }
}
