//! Parsing and printing of `RATE` values (`--bwlimit`), as specified in `design.md`.
//!
//! A rate is a number followed by a unit. Without a `B`, units are **bits per second**
//! in the network convention (SI prefixes, powers of 1000): `50M` is 50 Mbit/s,
//! `100k` is 100 kbit/s, `1G` is 1 Gbit/s; `50Mbit`, `50Mbps` and `50Mb` mean the same.
//! With an uppercase `B`, units are **bytes per second**: `6MB` is 6×10^6 bytes/s and
//! `6MiB` is 6×2^20 bytes/s (`KB`/`KiB`, `GB`/`GiB`, `TB`/`TiB` likewise). An optional
//! `/s` may follow (`6MB/s`, `50Mbit/s`). Decimals are allowed (`1.5G`).
//!
//! A bare number other than `0` is **rejected**: `--bwlimit 1000` means KiB/s to rsync
//! users and bits/s to network people, so syncd asks for a unit instead of guessing.
//! `0` means "no limit", as with rsync's `--bwlimit=0`. [`RATE_HELP`] is the text
//! for `--help`.
//!
//! This module is sans-IO and knows nothing about token buckets: it turns text into
//! bytes per second ([`parse_rate`], [`Rate`]) and back into a human form.

use std::fmt;
use std::str::FromStr;

/// Help text for `--bwlimit RATE`, for the CLI's `--help`.
pub const RATE_HELP: &str = "Bandwidth cap on wire bytes. Bits per second by default, the \
way network people write it: 50M = 50 Mbit/s, 100k = 100 kbit/s, 1G = 1 Gbit/s. Bytes per \
second with an uppercase B: 6MB = 6,000,000 bytes/s, 6MiB = 6×1024×1024 bytes/s. A unit is \
required; 0 means no limit.";

/// The accepted forms, for every error message: what to write instead.
pub const ACCEPTED_FORMS: &str = "accepted: a number with a unit, bits/s as 50M, 100k, 1.5G \
(k/M/G/T), bytes/s as 6MB or 6MiB (KB/MB/GB/KiB/MiB/GiB), or 0 for no limit";

/// Why a `RATE` value could not be parsed. Every variant names the input and the
/// [`ACCEPTED_FORMS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// The input was empty or only whitespace.
    #[error("invalid rate \"{input}\": empty; {ACCEPTED_FORMS}")]
    Empty {
        /// The text as given.
        input: String,
    },
    /// The numeric part is missing or is not a decimal number.
    #[error("invalid rate \"{input}\": expected a number followed by a unit; {ACCEPTED_FORMS}")]
    BadNumber {
        /// The text as given.
        input: String,
    },
    /// The unit after the number is not one this parser knows.
    #[error("invalid rate \"{input}\": unknown unit \"{unit}\"; {ACCEPTED_FORMS}")]
    UnknownUnit {
        /// The text as given.
        input: String,
        /// The unparsed unit text.
        unit: String,
    },
    /// A non-zero number without a unit: ambiguous (bits? bytes? rsync's KiB?).
    #[error(
        "invalid rate \"{input}\": a unit is required, e.g. \"{input}M\" for {input} Mbit/s \
         or \"{input}MB\" for {input} MB/s (0 means no limit)"
    )]
    MissingUnit {
        /// The text as given.
        input: String,
    },
    /// A minus sign: a cap cannot be negative.
    #[error("invalid rate \"{input}\": a rate cannot be negative; {ACCEPTED_FORMS}")]
    Negative {
        /// The text as given.
        input: String,
    },
    /// Scientific notation (`1e99`), which would hide an absurd value behind a short one.
    #[error("invalid rate \"{input}\": exponents (e) are not accepted; {ACCEPTED_FORMS}")]
    Exponent {
        /// The text as given.
        input: String,
    },
    /// The value is non-zero but rounds to less than one byte per second.
    #[error("invalid rate \"{input}\": below 1 byte/s; {ACCEPTED_FORMS}")]
    TooSmall {
        /// The text as given.
        input: String,
    },
    /// The value does not fit in a `u64` of bytes per second.
    #[error("invalid rate \"{input}\": too large (more than 2^64 bytes/s); {ACCEPTED_FORMS}")]
    TooLarge {
        /// The text as given.
        input: String,
    },
}

/// A parsed rate in bytes per second; `0` means unlimited.
///
/// Parse with [`str::parse`] (or [`parse_rate`]); [`Display`](fmt::Display) prints it in
/// bits per second with an SI prefix, e.g. `50 Mbit/s`, or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate {
    bytes_per_sec: u64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { bytes_per_sec: 0 };

    /// A rate of `bytes_per_sec` bytes per second (`0` = unlimited).
    pub const fn from_bytes_per_sec(bytes_per_sec: u64) -> Rate {
        Rate { bytes_per_sec }
    }

    /// Bytes per second; `0` means unlimited.
    pub const fn bytes_per_sec(self) -> u64 {
        self.bytes_per_sec
    }

    /// `true` for `0`, i.e. no limit.
    pub const fn is_unlimited(self) -> bool {
        self.bytes_per_sec == 0
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Rate, RateError> {
        parse_rate(s).map(Rate::from_bytes_per_sec)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes_per_sec == 0 {
            return f.write_str("unlimited");
        }
        let bits = u128::from(self.bytes_per_sec) * 8;
        let (div, prefix) = [
            (1_000_000_000_000u128, "T"),
            (1_000_000_000, "G"),
            (1_000_000, "M"),
            (1_000, "k"),
            (1, ""),
        ]
        .into_iter()
        .find(|(d, _)| bits >= *d)
        .unwrap_or((1, ""));
        // Three decimals, trailing zeros trimmed: 50 Mbit/s, 1.5 Gbit/s, 8.192 kbit/s.
        let milli = (bits * 1000 + div / 2) / div;
        let (whole, frac) = (milli / 1000, milli % 1000);
        if frac == 0 {
            write!(f, "{whole} {prefix}bit/s")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{whole}.{} {prefix}bit/s", frac.trim_end_matches('0'))
        }
    }
}

/// Parses a `RATE` (see the module docs) into bytes per second; `0` means unlimited.
///
/// Bit rates are rounded to the nearest whole byte per second.
///
/// ```
/// use syncd::rate::parse_rate;
/// assert_eq!(parse_rate("50M").unwrap(), 6_250_000);
/// assert_eq!(parse_rate("6MiB").unwrap(), 6 * 1024 * 1024);
/// assert!(parse_rate("5X").unwrap_err().to_string().starts_with("invalid rate \"5X\""));
/// ```
pub fn parse_rate(input: &str) -> Result<u64, RateError> {
    let s = input.trim();
    let owned = || input.to_string();
    if s.is_empty() {
        return Err(RateError::Empty { input: owned() });
    }
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_len);
    if s.strip_prefix('-')
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit() || c == '.'))
    {
        return Err(RateError::Negative { input: owned() });
    }
    if !num.is_empty()
        && unit.starts_with(['e', 'E'])
        && unit[1..].starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
    {
        return Err(RateError::Exponent { input: owned() });
    }
    let (mantissa, scale) =
        parse_decimal(num).ok_or_else(|| RateError::BadNumber { input: owned() })?;
    let unit = unit.trim_start();

    let (multiplier, is_bytes) = match parse_unit(unit) {
        Some(u) => u,
        None => {
            return Err(RateError::UnknownUnit {
                input: owned(),
                unit: unit.to_string(),
            });
        }
    };
    if mantissa == 0 {
        return Ok(0);
    }
    if unit.is_empty() {
        return Err(RateError::MissingUnit { input: owned() });
    }
    // value = mantissa / 10^scale * multiplier  [bits or bytes per second]
    let numerator = mantissa
        .checked_mul(multiplier)
        .ok_or_else(|| RateError::TooLarge { input: owned() })?;
    let denominator = 10u128.pow(scale) * if is_bytes { 1 } else { 8 };
    let bytes = (numerator + denominator / 2) / denominator;
    if bytes == 0 {
        return Err(RateError::TooSmall { input: owned() });
    }
    u64::try_from(bytes).map_err(|_| RateError::TooLarge { input: owned() })
}

/// `"12.50"` → `(1250, 2)`. At most 18 decimals, at most one dot, at least one digit.
fn parse_decimal(num: &str) -> Option<(u128, u32)> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let mut mantissa: u128 = 0;
    for c in int.chars().chain(frac.chars()) {
        let d = c.to_digit(10)?;
        mantissa = mantissa.checked_mul(10)?.checked_add(u128::from(d))?;
    }
    Some((mantissa, u32::try_from(frac.len()).ok()?))
}

/// The unit text after the number → (multiplier, counts bytes). `None` if unknown.
///
/// Grammar: `[prefix[i]] [b | bit | bits | bps | B | Bps] [/s]`, where the prefix is
/// one of `k K m M g G t T` (SI) and an `i`/`I` after it makes it binary (1024^n).
/// `b`, `bit`, `bps` (any case except a lone uppercase `B`) are bits; `B` and `Bps`
/// are bytes. No unit at all (or only a prefix) is bits.
fn parse_unit(unit: &str) -> Option<(u128, bool)> {
    let unit = unit.strip_suffix("/s").unwrap_or(unit);
    let mut rest = unit;
    let mut power: u32 = 0;
    if let Some(c) = rest.chars().next() {
        power = match c {
            'k' | 'K' => 1,
            'm' | 'M' => 2,
            'g' | 'G' => 3,
            't' | 'T' => 4,
            _ => 0,
        };
        if power > 0 {
            rest = &rest[1..];
        }
    }
    let mut base: u128 = 1000;
    if let Some(r) = rest.strip_prefix(['i', 'I']).filter(|_| power > 0) {
        base = 1024;
        rest = r;
    }
    let is_bytes = match rest {
        "" | "b" | "bit" | "bits" | "Bit" | "Bits" | "bps" => false,
        "B" | "Bps" | "byte" | "bytes" => true,
        _ => return None,
    };
    Some((base.pow(power), is_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One table row: input → expected bytes per second.
    fn check_ok(input: &str, expect: u64) {
        match parse_rate(input) {
            Ok(got) => assert_eq!(got, expect, "parse_rate({input:?})"),
            Err(e) => panic!("parse_rate({input:?}) failed: {e}; expected {expect}"),
        }
    }

    #[test]
    fn bit_rates_use_si_prefixes() {
        for (input, expect) in [
            ("50M", 6_250_000),
            ("50m", 6_250_000),
            ("50Mbit", 6_250_000),
            ("50Mbit/s", 6_250_000),
            ("50Mbps", 6_250_000),
            ("50Mb", 6_250_000),
            ("50 M", 6_250_000),
            (" 50M ", 6_250_000),
            ("100k", 12_500),
            ("100K", 12_500),
            ("1G", 125_000_000),
            ("10g", 1_250_000_000),
            ("1T", 125_000_000_000),
            ("1.5G", 187_500_000),
            ("0.5M", 62_500),
            (".5M", 62_500),
            ("8bit", 1),
            ("8b", 1),
            ("1Mibit", 131_072),
            ("1Ki", 128),
        ] {
            check_ok(input, expect);
        }
    }

    #[test]
    fn byte_rates_use_uppercase_b() {
        for (input, expect) in [
            ("6MB", 6_000_000),
            ("6MB/s", 6_000_000),
            ("6MiB", 6 * 1024 * 1024),
            ("6mib", 6 * 1024 * 1024 / 8), // lowercase b: bits, binary prefix
            ("6MiB/s", 6 * 1024 * 1024),
            ("500KB", 500_000),
            ("500kB", 500_000),
            ("500KiB", 500 * 1024),
            ("1GiB", 1 << 30),
            ("1GB", 1_000_000_000),
            ("2TiB", 2 << 40),
            ("1.5MiB", 1_572_864),
            ("100B", 100),
            ("100Bps", 100),
            ("100 bytes", 100),
        ] {
            check_ok(input, expect);
        }
    }

    #[test]
    fn zero_means_unlimited() {
        for input in ["0", "0M", "0.0", "0MB", "000"] {
            check_ok(input, 0);
        }
        assert!("0".parse::<Rate>().unwrap().is_unlimited());
    }

    #[test]
    fn rounding_to_nearest_byte() {
        check_ok("12b", 2); // 1.5 bytes/s rounds up
        check_ok("11b", 1); // 1.375
        check_ok("1.001k", 125); // 125.125
    }

    #[test]
    fn errors_name_the_input() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("M", "expected a number"),
            ("5X", "unknown unit \"X\""),
            ("5MX", "unknown unit \"MX\""),
            ("5 Mbit/h", "unknown unit"),
            ("1.2.3M", "expected a number"),
            (".M", "expected a number"),
            ("-5M", "cannot be negative"),
            ("-0", "cannot be negative"),
            ("--json", "expected a number"),
            ("1e99", "exponents"),
            ("1E3M", "exponents"),
            ("1e-3", "exponents"),
            ("1000", "a unit is required"),
            ("1b", "below 1 byte/s"),
            ("99999999999999999999T", "too large"),
            (
                "999999999999999999999999999999999999999999M",
                "expected a number",
            ),
        ];
        for (input, needle) in cases {
            let err = parse_rate(input).expect_err(input);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid rate \"{input}\"")),
                "{input:?}: message {msg:?} does not name the input"
            );
            assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
            if !matches!(err, RateError::MissingUnit { .. }) {
                assert!(
                    msg.contains(ACCEPTED_FORMS),
                    "{input:?}: {msg:?} names no form"
                );
            }
        }
    }

    #[test]
    fn display_in_bits_per_second() {
        for (bytes, expect) in [
            (0, "unlimited"),
            (1, "8 bit/s"),
            (125, "1 kbit/s"),
            (12_500, "100 kbit/s"),
            (6_250_000, "50 Mbit/s"),
            (187_500_000, "1.5 Gbit/s"),
            (6 * 1024 * 1024, "50.332 Mbit/s"),
            (125_000_000_000, "1 Tbit/s"),
            (u64::MAX, "147573952.59 Tbit/s"),
        ] {
            assert_eq!(
                Rate::from_bytes_per_sec(bytes).to_string(),
                expect,
                "{bytes} B/s"
            );
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for input in ["50M", "100k", "1G", "1.5G", "8b"] {
            let rate: Rate = input.parse().unwrap();
            let shown = rate.to_string();
            let again: Rate = shown.replace(' ', "").parse().unwrap();
            assert_eq!(rate, again, "{input} → {shown}");
        }
    }
}
