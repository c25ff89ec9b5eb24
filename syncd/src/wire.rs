//! The one bounds-checked byte reader, shared by the manifest's node encoding
//! ([`crate::manifest::Node::decode`]) and the wire codec ([`crate::proto::codec`]).
//!
//! Little-endian integers, fixed arrays, and u32-prefixed byte strings and counts. A count
//! is checked against the bytes that remain before the caller reserves anything for it, so
//! no decoder allocates more than its input could justify. Sans-IO; it never panics.

/// Why a read stopped short; each decoder turns it into its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// The input ended before the value did.
    Truncated,
    /// A count of items that could not fit in what remains.
    Count(usize),
}

/// A cursor over a byte slice.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }
    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
    /// Skips everything that remains.
    pub fn finish(&mut self) {
        self.0 = &[];
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.0.len() < n {
            return Err(Short::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A u32 count of items each at least `item` bytes long, checked against what remains.
    pub fn count(&mut self, item: usize) -> Result<usize, Short> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.0.len() {
            return Err(Short::Count(n));
        }
        Ok(n)
    }
    /// A u32-length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Short> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_stops_short() {
        let mut r = Reader::new(&[7, 1, 0, 0, 0, 9, 2, 0, 0, 0]);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bytes(), Ok(&[9][..]));
        assert_eq!(r.count(1), Err(Short::Count(2)));
        assert_eq!(r.rest(), &[] as &[u8]);
        assert_eq!(Reader::new(&[1, 2]).u32(), Err(Short::Truncated));
        let mut r = Reader::new(&[1, 0, 0, 0, 5]);
        assert_eq!(r.count(1), Ok(1));
        assert_eq!(r.array::<1>(), Ok([5]));
    }
}
