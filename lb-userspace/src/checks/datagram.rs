//! The bytes a udp health check sends and expects, as people write them:
//! plain text, or `hex:` and hex digits for binary.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The largest UDP payload over IPv4 (65,535 − 20 − 8).
pub const MAX_DATAGRAM: usize = 65_507;

const HEX: &str = "hex:";

/// How many bytes of a reply a check's detail shows.
const PREVIEW_BYTES: usize = 32;

/// Why datagram bytes did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    /// An odd number of digits after `hex:`.
    #[error("hex: needs two digits a byte, got {0} digits")]
    OddHex(usize),
    /// A character after `hex:` that is not a hex digit.
    #[error("hex: takes the digits 0-9 and a-f only, not {0:?}")]
    NotHex(char),
    /// More bytes than one datagram carries.
    #[error("{0} bytes are too large for a datagram: use at most 65507")]
    TooLarge(usize),
}

/// Bytes of one datagram, at most [`MAX_DATAGRAM`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Datagram(Vec<u8>);

impl Datagram {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Datagram {
    type Err = DatagramError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = match text.strip_prefix(HEX) {
            Some(digits) => decode_hex(digits)?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.len() > MAX_DATAGRAM {
            return Err(DatagramError::TooLarge(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

fn decode_hex(digits: &str) -> Result<Vec<u8>, DatagramError> {
    let nibbles = digits
        .chars()
        .map(|c| c.to_digit(16).ok_or(DatagramError::NotHex(c)))
        .collect::<Result<Vec<u32>, _>>()?;
    if nibbles.len() % 2 != 0 {
        return Err(DatagramError::OddHex(nibbles.len()));
    }
    Ok(nibbles
        .chunks(2)
        .map(|pair| ((pair[0] << 4) | pair[1]) as u8)
        .collect())
}

/// As text when it reads back as the same bytes, else as `hex:`.
impl fmt::Display for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) if !text.starts_with(HEX) => f.write_str(text),
            _ => {
                f.write_str(HEX)?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl TryFrom<String> for Datagram {
    type Error = DatagramError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Datagram> for String {
    fn from(datagram: Datagram) -> Self {
        datagram.to_string()
    }
}

/// The start of `bytes`, quoted with non-printable bytes escaped, for a
/// check's detail: `"HTTP/1.1 400\r\n…"`.
pub fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let more = if bytes.len() > PREVIEW_BYTES {
        "…"
    } else {
        ""
    };
    format!("\"{}{more}\"", shown.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_hex_parse_and_print_back() {
        let text: Datagram = "ping\n".parse().unwrap();
        assert_eq!(text.as_bytes(), b"ping\n");
        assert_eq!(text.to_string(), "ping\n");
        let binary: Datagram = "hex:00FFa0".parse().unwrap();
        assert_eq!(binary.as_bytes(), [0x00, 0xff, 0xa0]);
        assert_eq!(binary.to_string(), "hex:00ffa0");
        let looks_like_hex: Datagram = "hex:6865".parse().unwrap();
        assert_eq!(looks_like_hex.as_bytes(), b"he");
        let literal = Datagram(b"hex:not hex".to_vec());
        assert_eq!(literal.to_string().parse::<Datagram>().unwrap(), literal);
        assert_eq!("".parse::<Datagram>().unwrap(), Datagram::default());
        assert_eq!("hex:".parse::<Datagram>().unwrap(), Datagram::default());
    }

    #[test]
    fn bad_hex_and_oversized_datagrams_are_refused() {
        assert_eq!("hex:abc".parse::<Datagram>(), Err(DatagramError::OddHex(3)));
        assert_eq!(
            "hex:zz".parse::<Datagram>(),
            Err(DatagramError::NotHex('z'))
        );
        assert!("x".repeat(MAX_DATAGRAM).parse::<Datagram>().is_ok());
        let error = "x"
            .repeat(MAX_DATAGRAM + 1)
            .parse::<Datagram>()
            .unwrap_err();
        assert!(
            error.to_string().contains("too large for a datagram"),
            "{error}"
        );
        let hex = format!("hex:{}", "00".repeat(MAX_DATAGRAM + 1));
        assert_eq!(
            hex.parse::<Datagram>(),
            Err(DatagramError::TooLarge(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn previews_are_short_and_escaped() {
        assert_eq!(preview(b"ok\r\n\x00"), r#""ok\r\n\x00""#);
        let long = preview(&[b'a'; 100]);
        assert_eq!(long, format!("\"{}…\"", "a".repeat(PREVIEW_BYTES)));
    }
}
