//! Parsing and printing of sizes, durations and byte ranges.
//!
//! Sizes take binary suffixes (`K`, `M`, `G`, `T`, `P`, optionally followed
//! by `i` and/or `B`, any case): `512`, `64K`, `1GiB`. Byte counts given to
//! the kernel must be whole 512-byte sectors; that is checked where the
//! value is parsed, so a bad value is a usage error.

use std::fmt;
use std::time::Duration;

/// Bytes of a sector.
pub const SECTOR: u64 = 512;

/// Why a value on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty value")]
    Empty,
    #[error("'{0}' is not a number with an optional unit")]
    NotANumber(String),
    #[error("unknown unit '{0}'")]
    UnknownUnit(String),
    #[error("'{0}' is too large")]
    Overflow(String),
    #[error("{0} is not a multiple of 512 bytes")]
    Unaligned(u64),
    #[error("a range needs a length greater than 0")]
    EmptyRange,
    #[error("'{0}' is not OFFSET:LENGTH")]
    NotARange(String),
}

fn split_number(s: &str) -> Result<(u64, &str), ParseError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ParseError::Empty);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(ParseError::NotANumber(s.to_owned()));
    }
    let n = s[..digits]
        .parse::<u64>()
        .map_err(|_| ParseError::Overflow(s.to_owned()))?;
    Ok((n, s[digits..].trim_start()))
}

/// Parses a size in bytes with an optional binary suffix.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let (n, unit) = split_number(s)?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        "p" | "pi" | "pb" | "pib" => 50,
        _ => return Err(ParseError::UnknownUnit(unit.to_owned())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ParseError::Overflow(s.trim().to_owned()))
}

/// Parses a size that must be whole sectors; returns bytes.
pub fn parse_sector_size(s: &str) -> Result<u64, ParseError> {
    let bytes = parse_size(s)?;
    if bytes % SECTOR != 0 {
        return Err(ParseError::Unaligned(bytes));
    }
    Ok(bytes)
}

/// Parses a duration: a number with `ms`, `s` (the default), `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let (n, unit) = split_number(s)?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(ParseError::UnknownUnit(unit.to_owned())),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| ParseError::Overflow(s.trim().to_owned()))
}

/// A byte range `OFFSET:LENGTH` of a device, both whole sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes, greater than 0.
    pub length: u64,
}

impl ByteRange {
    /// The range in sectors, as the kernel takes it.
    pub fn sectors(&self) -> blksnap::SectorRange {
        blksnap::SectorRange {
            offset: self.offset / SECTOR,
            count: self.length / SECTOR,
        }
    }
}

impl std::str::FromStr for ByteRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (off, len) = s
            .split_once(':')
            .ok_or_else(|| ParseError::NotARange(s.to_owned()))?;
        let offset = parse_sector_size(off)?;
        let length = parse_sector_size(len)?;
        if length == 0 {
            return Err(ParseError::EmptyRange);
        }
        if offset.checked_add(length).is_none() {
            return Err(ParseError::Overflow(s.to_owned()));
        }
        Ok(ByteRange { offset, length })
    }
}

/// A byte count for a person: exact binary units when the count is a whole
/// number of them, else one decimal.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let n = self.0;
        let mut i = 0;
        while i + 1 < UNITS.len() && n >= 1u64 << (10 * (i + 1)) {
            i += 1;
        }
        if i == 0 {
            return write!(f, "{n} B");
        }
        let unit = 1u64 << (10 * i);
        if n % unit == 0 {
            write!(f, "{} {}", n / unit, UNITS[i])
        } else {
            write!(f, "{:.1} {}", n as f64 / unit as f64, UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, ParseError>)] = &[
            ("0", Ok(0)),
            ("512", Ok(512)),
            ("4k", Ok(4096)),
            ("64K", Ok(65536)),
            ("1M", Ok(1 << 20)),
            ("1MiB", Ok(1 << 20)),
            ("2 GiB", Ok(2 << 30)),
            ("1gb", Ok(1 << 30)),
            ("1T", Ok(1 << 40)),
            ("", Err(ParseError::Empty)),
            ("G", Err(ParseError::NotANumber("G".into()))),
            ("-1", Err(ParseError::NotANumber("-1".into()))),
            ("1X", Err(ParseError::UnknownUnit("X".into()))),
            ("1.5G", Err(ParseError::UnknownUnit(".5G".into()))),
            (
                "99999999999P",
                Err(ParseError::Overflow("99999999999P".into())),
            ),
            (
                "99999999999999999999",
                Err(ParseError::Overflow("99999999999999999999".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_size(input), want, "input {input:?}");
        }
    }

    #[test]
    fn sector_sizes() {
        assert_eq!(parse_sector_size("1K"), Ok(1024));
        assert_eq!(parse_sector_size("4097"), Err(ParseError::Unaligned(4097)));
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Result<Duration, ParseError>)] = &[
            ("5", Ok(Duration::from_secs(5))),
            ("5s", Ok(Duration::from_secs(5))),
            ("250ms", Ok(Duration::from_millis(250))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("0", Ok(Duration::ZERO)),
            ("1d", Err(ParseError::UnknownUnit("d".into()))),
            ("soon", Err(ParseError::NotANumber("soon".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_duration(input), want, "input {input:?}");
        }
    }

    #[test]
    fn ranges() {
        let ok = |offset, length| Ok(ByteRange { offset, length });
        let cases: &[(&str, Result<ByteRange, ParseError>)] = &[
            ("0:4096", ok(0, 4096)),
            ("1M:64K", ok(1 << 20, 65536)),
            ("512:512", ok(512, 512)),
            ("0:0", Err(ParseError::EmptyRange)),
            ("100:512", Err(ParseError::Unaligned(100))),
            ("0:100", Err(ParseError::Unaligned(100))),
            ("4096", Err(ParseError::NotARange("4096".into()))),
            ("a:b", Err(ParseError::NotANumber("a".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<ByteRange>(), want, "input {input:?}");
        }
        let r: ByteRange = "1M:64K".parse().unwrap();
        assert_eq!(
            r.sectors(),
            blksnap::SectorRange {
                offset: 2048,
                count: 128
            }
        );
    }

    #[test]
    fn human_sizes() {
        let cases = [
            (0, "0 B"),
            (1000, "1000 B"),
            (1024, "1 KiB"),
            (65536, "64 KiB"),
            (1536, "1.5 KiB"),
            (1 << 30, "1 GiB"),
            ((1 << 40) + (1 << 39), "1.5 TiB"),
        ];
        for (n, want) in cases {
            assert_eq!(Size(n).to_string(), want);
        }
    }
}
