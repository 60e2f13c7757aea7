//! Internet checksums updated in place when NAT rewrites addresses and
//! ports (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')` for every changed
//! 16-bit word), so a translated packet costs a few additions, not a sum
//! over its payload. XDP has no `l4_csum_replace`, and `bpf_csum_diff`
//! over packet memory trips the verifier; these are plain arithmetic.
//!
//! Words are read big-endian, as they sit on the wire; the checksum field
//! is read and written the same way.

/// A checksum being updated word by word.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    /// `~HC` plus `~m + m'` per changed word, not yet folded.
    sum: u32,
}

impl Update {
    /// Starts from the checksum field's current value.
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Self {
            sum: u32::from(!check),
        }
    }

    /// One 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.sum += u32::from(!old) + u32::from(new);
    }

    /// A field of `N` bytes (`N` even, at most 64) changed from `old` to
    /// `new`: an address or a port.
    #[inline(always)]
    pub fn field<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        self.add(delta(old, new));
    }

    /// Adds the change of several words at once, as [`delta`] sums it.
    #[inline(always)]
    pub fn add(&mut self, delta: u32) {
        self.sum += delta;
    }

    /// The new checksum field.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        !fold(self.sum)
    }

    /// The new checksum field of a UDP datagram over IPv4: one that had
    /// none (0) keeps none, and a computed 0 is sent as `0xffff`, since 0
    /// means "no checksum" (RFC 768).
    #[inline(always)]
    pub fn finish_udp(self, old: u16) -> u16 {
        if old == 0 {
            return 0;
        }
        match self.finish() {
            0 => 0xffff,
            check => check,
        }
    }
}

/// The change of a field of `N` bytes (`N` even, at most 64) from `old`
/// to `new`, for [`Update::add`]: a rewritten address changes the IPv4
/// header's checksum and the transport checksum (its pseudo-header) by
/// the same amount, so it is summed once.
#[inline(always)]
#[expect(
    clippy::indexing_slicing,
    reason = "i + 1 < N indexes both N-byte arrays"
)]
pub fn delta<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        let old = u16::from_be_bytes([old[i], old[i + 1]]);
        let new = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += u32::from(!old) + u32::from(new);
        i += 2;
    }
    sum
}

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "two folds leave at most 0xffff"
)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The Internet checksum of `bytes` (an odd last byte padded with zero),
/// from scratch: for building headers and for checking updates.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum(bytes, 0))
}

/// The one's complement sum of `bytes` added to `start`, not folded.
#[expect(
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    reason = "chunks_exact(2) yields pairs; the loop leaves sum >> 32 == 0"
)]
pub fn sum(bytes: &[u8], start: u32) -> u32 {
    let mut sum = u64::from(start);
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the tests need many cases, not
    /// cryptographic ones.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
    }

    /// A header whose checksum (at bytes 10..12) covers it all, as IPv4's.
    fn with_check(mut header: [u8; 40]) -> [u8; 40] {
        header[10..12].copy_from_slice(&[0, 0]);
        let check = checksum(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        header
    }

    #[test]
    fn an_update_equals_a_recomputation() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..10_000 {
            let before = with_check(rng.bytes());
            let mut after = before;
            // An address (4 or 16 bytes) at 12, a port at 36.
            let address: [u8; 16] = rng.bytes();
            let width = if rng.next() & 1 == 0 { 4 } else { 16 };
            after[12..12 + width].copy_from_slice(&address[..width]);
            let port: [u8; 2] = rng.bytes();
            after[36..38].copy_from_slice(&port);

            let mut update = Update::new(u16::from_be_bytes([before[10], before[11]]));
            let old: [u8; 16] = before[12..28].try_into().unwrap();
            let new: [u8; 16] = after[12..28].try_into().unwrap();
            update.field(&old, &new);
            update.field(&[before[36], before[37]], &port);
            after[10..12].copy_from_slice(&update.finish().to_be_bytes());
            assert_eq!(checksum(&after), 0, "{before:?} → {after:?}");
        }
    }

    #[test]
    fn unchanged_words_leave_the_checksum_alone() {
        let header = with_check([7; 40]);
        let check = u16::from_be_bytes([header[10], header[11]]);
        let mut update = Update::new(check);
        update.field(&[1, 2, 3, 4], &[1, 2, 3, 4]);
        // 0xffff and 0 are the same number in one's complement; the
        // update may pick either form, and both verify.
        let new = update.finish();
        let mut after = header;
        after[10..12].copy_from_slice(&new.to_be_bytes());
        assert_eq!(checksum(&after), 0);
    }

    #[test]
    fn a_udp_datagram_without_a_checksum_keeps_none() {
        let mut update = Update::new(0);
        update.field(&[192, 0, 2, 1], &[198, 51, 100, 7]);
        assert_eq!(update.finish_udp(0), 0);
    }

    #[test]
    fn a_computed_zero_udp_checksum_is_sent_as_all_ones() {
        // ~HC + ~m + m' folding to 0xffff makes the new field 0.
        let mut update = Update::new(0xffff);
        update.word(0x0000, 0xffff);
        assert_eq!(update.finish(), 0);
        let mut update = Update::new(0xffff);
        update.word(0x0000, 0xffff);
        assert_eq!(update.finish_udp(0xffff), 0xffff);
    }
}
