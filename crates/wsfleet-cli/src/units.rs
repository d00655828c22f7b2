//! Sizes and durations as people write them: `512`, `5KiB`, `5MB`; `500ms`,
//! `30s`, `55m`, `2h`.
//!
//! Numbers are whole (no `1.5s`); a number and its unit may be separated by
//! spaces; units are matched without regard to case. The parsers are clap
//! `value_parser`s, so a bad value is a usage error naming the value.

use std::fmt;
use std::time::Duration;

/// Longest duration accepted: 100 years. Far beyond any real run, and small
/// enough that adding it to "now" can never overflow a clock.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a size or duration did not parse. Displays as
/// `invalid size "5XB": unknown unit "XB" (use B, KiB, MiB, GiB, KB, MB, GB)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitError {
    /// `size` or `duration`.
    what: &'static str,
    /// The input, as given.
    input: String,
    /// What is wrong with it.
    problem: String,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}",
            self.what, self.input, self.problem
        )
    }
}

impl std::error::Error for UnitError {}

const SIZE_UNITS: &str = "B, KiB, MiB, GiB, KB, MB, GB";
const DURATION_UNITS: &str = "ms, s, m, h, d; a plain number is seconds";

/// Splits `input` into its leading digits and the (trimmed) unit after them.
fn split_number(what: &'static str, input: &str, units: &str) -> Result<(u64, String), UnitError> {
    let err = |problem: String| UnitError {
        what,
        input: input.to_owned(),
        problem,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(err(format!("empty (use a number with {units})")));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(err(format!(
            "expected a whole number first, as in \"5{}\"",
            if what == "size" { "MiB" } else { "s" }
        )));
    }
    let number = digits
        .parse::<u64>()
        .map_err(|_| err(format!("number {digits} is too large")))?;
    Ok((number, unit.trim().to_owned()))
}

/// Parses a size in bytes: a whole number with an optional unit, binary
/// (`KiB`, `MiB`, `GiB`) or decimal (`KB`, `MB`, `GB`); no unit or `B` is
/// bytes.
///
/// # Errors
/// A [`UnitError`] naming the input and what is wrong with it.
pub(crate) fn parse_size(input: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number("size", input, SIZE_UNITS)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(UnitError {
                what: "size",
                input: input.to_owned(),
                problem: format!("unknown unit {unit:?} (use {SIZE_UNITS})"),
            });
        }
    };
    number.checked_mul(multiplier).ok_or_else(|| UnitError {
        what: "size",
        input: input.to_owned(),
        problem: "too large".to_owned(),
    })
}

/// As [`parse_size`], as a `usize` (what buffer limits are counted in).
///
/// # Errors
/// As [`parse_size`], or if the size does not fit in memory addresses.
pub(crate) fn parse_size_usize(input: &str) -> Result<usize, UnitError> {
    let bytes = parse_size(input)?;
    usize::try_from(bytes).map_err(|_| UnitError {
        what: "size",
        input: input.to_owned(),
        problem: "too large for this machine".to_owned(),
    })
}

/// Parses a duration: a whole number with a unit `ms`, `s`, `m`, `h` or `d`;
/// a plain number is seconds. At most 100 years.
///
/// # Errors
/// A [`UnitError`] naming the input and what is wrong with it.
pub(crate) fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number("duration", input, DURATION_UNITS)?;
    let err = |problem: String| UnitError {
        what: "duration",
        input: input.to_owned(),
        problem,
    };
    let seconds_per_unit: Option<u64> = match unit.to_ascii_lowercase().as_str() {
        "ms" => None,
        "" | "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        _ => {
            return Err(err(format!("unknown unit {unit:?} (use {DURATION_UNITS})")));
        }
    };
    let duration = match seconds_per_unit {
        None => Duration::from_millis(number),
        Some(per) => Duration::from_secs(
            number
                .checked_mul(per)
                .ok_or_else(|| err("too large".to_owned()))?,
        ),
    };
    if duration > MAX_DURATION {
        return Err(err("too large (at most 100 years)".to_owned()));
    }
    Ok(duration)
}

/// As [`parse_duration`], but zero is refused (for periods, such as a send
/// interval).
///
/// # Errors
/// As [`parse_duration`], or if the duration is zero.
pub(crate) fn parse_period(input: &str) -> Result<Duration, UnitError> {
    let duration = parse_duration(input)?;
    if duration.is_zero() {
        return Err(UnitError {
            what: "duration",
            input: input.to_owned(),
            problem: "must be greater than zero".to_owned(),
        });
    }
    Ok(duration)
}

/// A send rate: `5/s`, `300/m`, `0.5/s`, `100/h`, optionally with a burst:
/// `5/s,burst=10` (default burst 1; see [`wsfleet::fleet::SendRate`]).
/// The count may have a fraction; the unit is `s`, `m` or `h` (any case).
/// The range (above zero, at most 10^6 a second, at least one a day) is
/// checked when the fleet starts, naming the setting.
///
/// # Errors
/// A missing `/`, a count that is not a number, an unknown unit, or a
/// burst that is not `burst=N` with a whole N.
pub(crate) fn parse_send_rate(input: &str) -> Result<wsfleet::fleet::SendRate, UnitError> {
    let err = |problem: &str| UnitError {
        what: "send rate",
        input: input.to_owned(),
        problem: problem.to_owned(),
    };
    let (rate, burst) = match input.split_once(',') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (input, None),
    };
    let Some((count, unit)) = rate.split_once('/') else {
        return Err(err("expected COUNT/UNIT, as in \"5/s\" or \"300/m\""));
    };
    let count: f64 = count
        .trim()
        .parse()
        .ok()
        .filter(|c: &f64| c.is_finite())
        .ok_or_else(|| err("the count must be a number, as in \"5/s\" or \"0.5/s\""))?;
    let period = match unit.trim().to_ascii_lowercase().as_str() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(err("unknown unit (use s, m or h: \"5/s\", \"300/m\")")),
    };
    let mut rate = wsfleet::fleet::SendRate::per(count, period);
    if let Some(burst) = burst {
        let n = burst
            .trim()
            .strip_prefix("burst=")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .ok_or_else(|| err("expected \"burst=N\" after the comma, N a whole number"))?;
        rate = rate.burst(n);
    }
    Ok(rate)
}

/// A byte count for people: `512 B`, `4.0 KiB`, `12.3 MiB`, `1.5 GiB`.
pub(crate) fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss above 2^53 bytes is irrelevant for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_rates() {
        use wsfleet::fleet::SendRate;
        assert_eq!(parse_send_rate("5/s"), Ok(SendRate::per_second(5.0)));
        assert_eq!(
            parse_send_rate("300/m").map(|r| r.rate_per_second()),
            Ok(5.0)
        );
        assert_eq!(parse_send_rate("0.5/S"), Ok(SendRate::per_second(0.5)));
        assert_eq!(
            parse_send_rate("5/s, burst=10"),
            Ok(SendRate::per_second(5.0).burst(10))
        );
        for (bad, says) in [
            ("5", "COUNT/UNIT"),
            ("five/s", "must be a number"),
            ("5/d", "unknown unit"),
            ("5/s,10", "burst=N"),
            ("5/s,burst=-1", "burst=N"),
            ("inf/s", "must be a number"),
        ] {
            let e = parse_send_rate(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("5KiB"), Ok(5 * 1024));
        assert_eq!(parse_size("5MiB"), Ok(5 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("5KB"), Ok(5_000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size(" 5 mib "), Ok(5 << 20));
        assert_eq!(parse_size("5kib"), Ok(5 << 10));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert_eq!(
            parse_size("5XB").unwrap_err().to_string(),
            "invalid size \"5XB\": unknown unit \"XB\" (use B, KiB, MiB, GiB, KB, MB, GB)"
        );
        let e = parse_size("").unwrap_err().to_string();
        assert!(e.starts_with("invalid size \"\": empty"), "{e}");
        let e = parse_size("MiB").unwrap_err().to_string();
        assert!(e.contains("expected a whole number first"), "{e}");
        let e = parse_size("-5MiB").unwrap_err().to_string();
        assert!(e.contains("expected a whole number first"), "{e}");
        let e = parse_size("1.5MiB").unwrap_err().to_string();
        assert!(e.contains("unknown unit \".5MiB\""), "{e}");
        let e = parse_size("99999999999999999999").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = parse_size("99999999999GiB").unwrap_err().to_string();
        assert!(e.ends_with(": too large"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("55m"), Ok(Duration::from_secs(55 * 60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 3 S "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "invalid duration \"5x\": unknown unit \"x\" (use ms, s, m, h, d; a plain number is seconds)"
        );
        let e = parse_duration("s").unwrap_err().to_string();
        assert!(e.contains("expected a whole number first"), "{e}");
        let e = parse_duration("1.5s").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let e = parse_duration("18446744073709551615h")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(": too large"), "{e}");
        let e = parse_duration("1000000d").unwrap_err().to_string();
        assert!(e.contains("at most 100 years"), "{e}");
    }

    #[test]
    fn periods_are_not_zero() {
        assert_eq!(parse_period("1s"), Ok(Duration::from_secs(1)));
        let e = parse_period("0ms").unwrap_err().to_string();
        assert_eq!(e, "invalid duration \"0ms\": must be greater than zero");
    }

    #[test]
    fn usize_sizes() {
        assert_eq!(parse_size_usize("1KiB"), Ok(1024));
    }

    #[test]
    fn formatted_sizes() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12 << 20), "12.0 MiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
        assert_eq!(format_size(u64::MAX), "16777216.0 TiB");
    }
}
