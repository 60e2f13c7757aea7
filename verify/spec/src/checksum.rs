//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// The ones' complement sum of `bytes` as big-endian 16-bit words (an odd
/// last byte padded with a zero), folded to 16 bits.
pub fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for word in bytes.chunks(2) {
        let high = u64::from(word[0]) << 8;
        sum += high | word.get(1).map_or(0, |&low| u64::from(low));
    }
    fold(sum)
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field for `bytes` (with the field itself zero).
pub fn checksum(bytes: &[u8]) -> u16 {
    !ones_sum(bytes)
}

/// RFC 1624's equation 3: the checksum `check` after one 16-bit word of
/// what it covers changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
pub fn updated(check: u16, old: u16, new: u16) -> u16 {
    updated_words(check, &[(old, new)])
}

/// [`updated`] for several changed words at once.
pub fn updated_words(check: u16, words: &[(u16, u16)]) -> u16 {
    let sum = words.iter().fold(u64::from(!check), |sum, &(old, new)| {
        sum + u64::from(!old) + u64::from(new)
    });
    !fold(sum)
}
