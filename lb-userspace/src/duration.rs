//! Durations as people write them in flags, config files and JSON: `500ms`,
//! `2s`, `1.5s`, `5m`, `1h`.
//!
//! One number and one unit, nothing else: no whitespace, no sign, no
//! compound forms like `1h30m`, so every accepted text has one obvious
//! meaning. [`format()`] writes the shortest exact form back.

use std::time::Duration;

/// How to write a duration, repeated in every error.
const EXAMPLE: &str = "use a number and a unit, such as 500ms, 2s, 5m or 1h";

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000 * NANOS_PER_MS;
const NANOS_PER_M: u128 = 60 * NANOS_PER_S;
const NANOS_PER_H: u128 = 60 * NANOS_PER_M;

/// The longest duration accepted: 365 days. Anything longer in a timeout or
/// interval is a typo, and the cap keeps every sum of durations far from
/// overflow.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// The text is empty.
    #[error("empty duration: {EXAMPLE}")]
    Empty,
    /// The text holds a space, tab or newline.
    #[error(
        "duration `{0}` holds whitespace: write the number and unit together, such as 500ms or 2s"
    )]
    Whitespace(String),
    /// The text starts with a minus sign.
    #[error("duration `{0}` is negative: durations are 0 or more; {EXAMPLE}")]
    Negative(String),
    /// The text does not start with a decimal number (also NaN and inf).
    #[error("duration `{0}` does not start with a number: {EXAMPLE}")]
    BadNumber(String),
    /// A number without a unit.
    #[error("duration `{0}` has no unit: add ms, s, m or h, such as {0}s")]
    MissingUnit(String),
    /// A unit other than ms, s, m or h.
    #[error("duration `{text}` has unknown unit `{unit}`: {EXAMPLE}")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
    },
    /// Longer than [`MAX`].
    #[error("duration `{0}` is longer than a year: use at most 8760h")]
    TooLong(String),
}

/// Parses `NUMBER UNIT` (no space between), e.g. `300s`, `500ms`, `1.5s`.
///
/// Fractions are exact down to the nanosecond and rounded beyond it.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.chars().any(char::is_whitespace) {
        return Err(DurationError::Whitespace(text.to_owned()));
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    // Checked before the unit so that `NaNs` and `+5s` are bad numbers
    // rather than unknown units.
    if number.is_empty() {
        return Err(DurationError::BadNumber(text.to_owned()));
    }
    let unit_nanos = unit_nanos(text, unit)?;
    let nanos = scaled_nanos(number, unit_nanos)
        .ok_or_else(|| DurationError::BadNumber(text.to_owned()))?;
    if nanos > MAX.as_nanos() {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(Duration::from_nanos(
        u64::try_from(nanos).expect("a year of nanoseconds fits in u64"),
    ))
}

/// Nanoseconds in one `unit`.
fn unit_nanos(text: &str, unit: &str) -> Result<u128, DurationError> {
    match unit {
        "ms" => Ok(NANOS_PER_MS),
        "s" => Ok(NANOS_PER_S),
        "m" => Ok(NANOS_PER_M),
        "h" => Ok(NANOS_PER_H),
        "" => Err(DurationError::MissingUnit(text.to_owned())),
        _ => Err(DurationError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        }),
    }
}

/// `number` (digits, optionally `.` and more digits) times `unit_nanos`,
/// rounded to the nanosecond; `None` if it is not such a number.
///
/// Integer arithmetic rather than f64 so that `0.1s` is exactly 100ms.
/// Integer parts too large for u64 saturate: the caller refuses them as
/// longer than [`MAX`] anyway.
fn scaled_nanos(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || (number.contains('.') && !is_digits(fraction)) {
        return None;
    }
    let whole = whole.parse::<u64>().unwrap_or(u64::MAX);
    // 18 digits resolve a fraction of an hour far below a nanosecond, and
    // 10^18 times an hour in nanoseconds still fits in u128.
    #[expect(
        clippy::string_slice,
        reason = "the fraction is ASCII digits: every offset is a char boundary"
    )]
    let fraction = &fraction[..fraction.len().min(18)];
    let scale = 10u128.pow(fraction.len() as u32);
    // An empty fraction (no `.`) parses as nothing: zero.
    let numerator = fraction.parse::<u128>().unwrap_or(0) * unit_nanos;
    let fraction_nanos = (numerator + scale / 2) / scale;
    Some(u128::from(whole) * unit_nanos + fraction_nanos)
}

/// The shortest exact form: whole hours, minutes, seconds or milliseconds
/// (`1h`, `5m`, `90s`, `1500ms`), else seconds rounded to 3 decimals
/// (`0.000s` for anything under half a millisecond).
///
/// [`parse`] gives back the same duration for every whole number of
/// milliseconds.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    let units = [
        (NANOS_PER_H, "h"),
        (NANOS_PER_M, "m"),
        (NANOS_PER_S, "s"),
        (NANOS_PER_MS, "ms"),
    ];
    // Zero is a whole number of hours, but `0s` reads better than `0h`.
    if nanos == 0 {
        return "0s".to_owned();
    }
    match units.iter().find(|(size, _)| nanos.is_multiple_of(*size)) {
        Some((size, unit)) => format!("{}{unit}", nanos / size),
        None => {
            let millis = (nanos + NANOS_PER_MS / 2) / NANOS_PER_MS;
            format!("{}.{:03}s", millis / 1000, millis % 1000)
        }
    }
}

/// [`parse`] for clap: `#[arg(value_parser = duration::parse_clap)]`.
pub fn parse_clap(text: &str) -> Result<Duration, String> {
    parse(text).map_err(|e| e.to_string())
}

/// A `Duration` field as its [`format()`] string:
/// `#[serde(with = "crate::duration::serde_str")]`.
pub mod serde_str {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Writes the duration as its [`format()`](super::format()) string.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*d))
    }

    /// Reads a string that [`parse`](super::parse) accepts.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse(&text).map_err(D::Error::custom)
    }
}

/// An `Option<Duration>` field as its [`format()`] string, absent or null for
/// `None`: `#[serde(default, with = "crate::duration::serde_str_opt")]`
/// (`default` lets the field be left out).
pub mod serde_str_opt {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Writes `Some` as its [`format()`](super::format()) string, `None` as null.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serializer.serialize_some(&super::format(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads null as `None` and a string that [`parse`](super::parse)
    /// accepts as `Some`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn parses_fractions_exactly() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("0.5h"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("1.25ms"), Ok(Duration::from_micros(1250)));
        assert_eq!(parse("0.0000015ms"), Ok(Duration::from_nanos(2)));
        assert_eq!(parse("0.0000014ms"), Ok(Duration::from_nanos(1)));
        let many_digits = format!("1.{}s", "3".repeat(40));
        assert_eq!(parse(&many_digits), Ok(Duration::new(1, 333_333_333)));
    }

    #[test]
    fn accepts_up_to_a_year() {
        assert_eq!(parse("8760h"), Ok(MAX));
        assert_eq!(parse("525600m"), Ok(MAX));
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        for text in ["5 s", " 5s", "5s\n", "5\ts"] {
            assert_eq!(parse(text), Err(DurationError::Whitespace(text.into())));
        }
        assert_eq!(parse("-5s"), Err(DurationError::Negative("-5s".into())));
        assert_eq!(parse("5"), Err(DurationError::MissingUnit("5".into())));
        assert_eq!(parse("1.5"), Err(DurationError::MissingUnit("1.5".into())));
        for text in ["s", "NaNs", "infs", "+5s", ".5s", "5.s", "1.2.3s", "."] {
            assert!(
                matches!(
                    parse(text),
                    Err(DurationError::BadNumber(_) | DurationError::MissingUnit(_))
                ),
                "{text}"
            );
        }
        for (text, unit) in [("5d", "d"), ("5sec", "sec"), ("5S", "S"), ("1h30m", "h30m")] {
            let expected = DurationError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
            };
            assert_eq!(parse(text), Err(expected));
        }
    }

    #[test]
    fn rejects_more_than_a_year() {
        for text in [
            "8761h",
            "8760.001h",
            "99999999999999999999999s",
            "31536000001ms",
        ] {
            assert_eq!(
                parse(text),
                Err(DurationError::TooLong(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_show_how_to_write_a_duration() {
        let message = parse("5d").unwrap_err().to_string();
        assert!(message.contains("such as 500ms, 2s, 5m or 1h"), "{message}");
        assert_eq!(
            parse_clap("5").unwrap_err(),
            "duration `5` has no unit: add ms, s, m or h, such as 5s"
        );
    }

    #[test]
    fn formats_the_shortest_exact_form() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(5400)), "90m");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_micros(1500)), "0.002s");
        assert_eq!(format(Duration::new(2, 1)), "2.000s");
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Config {
        #[serde(with = "crate::duration::serde_str")]
        interval: Duration,
        #[serde(default, with = "crate::duration::serde_str_opt")]
        timeout: Option<Duration>,
    }

    #[test]
    fn serde_uses_the_string_form() {
        let config = Config {
            interval: Duration::from_secs(300),
            timeout: Some(Duration::from_millis(500)),
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(json, r#"{"interval":"5m","timeout":"500ms"}"#);
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
    }

    #[test]
    fn serde_optional_field_may_be_absent_or_null() {
        let expected = Config {
            interval: Duration::from_secs(2),
            timeout: None,
        };
        for json in [
            r#"{"interval":"2s"}"#,
            r#"{"interval":"2s","timeout":null}"#,
        ] {
            assert_eq!(serde_json::from_str::<Config>(json).unwrap(), expected);
        }
        assert_eq!(
            serde_json::to_string(&expected).unwrap(),
            r#"{"interval":"2s","timeout":null}"#
        );
    }

    #[test]
    fn serde_reports_the_parse_error() {
        let error = serde_json::from_str::<Config>(r#"{"interval":"2 s"}"#).unwrap_err();
        assert!(error.to_string().contains("holds whitespace"), "{error}");
        let error =
            serde_json::from_str::<Config>(r#"{"interval":"2s","timeout":"x"}"#).unwrap_err();
        assert!(
            error.to_string().contains("does not start with a number"),
            "{error}"
        );
    }

    proptest! {
        #[test]
        fn whole_milliseconds_round_trip(ms in 0..=(MAX.as_millis() as u64)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = parse(&text);
        }
    }
}
