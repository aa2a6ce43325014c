//! Durations as users write them (`500ms`, `2s`, `1m30s`, `1.5h`): one parser for flags and
//! CRD fields, and the schema pattern that admits exactly what the parser accepts.

use std::time::Duration;

/// Schema pattern matching what [`parse_duration`] accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration: write a number and a unit, e.g. 500ms, 2s, 1m30s (units: ns, us, ms, s, m, h)")]
pub struct DurationError {
    /// The rejected text.
    pub value: String,
}

/// Parses a Go-style duration: one or more `<number><unit>` terms, no sign, no spaces.
///
/// # Errors
///
/// [`DurationError`] when the text is empty, has an unknown unit, or overflows.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError { value: text.to_owned() };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        if num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.') {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let nanos = value * nanos_per_unit;
        // 100 years is far beyond any sensible timer; reject rather than saturate.
        if !nanos.is_finite() || nanos > 3.2e18 {
            return Err(err());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let term = Duration::from_nanos(nanos.round() as u64);
        total = total.checked_add(term).ok_or_else(err)?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it back (`1.5s`, `500ms`, `0s`).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "5", "s", "-1s", "1x", "1.2.3s", "1 s", "99999999999999h", ".5s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("is not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0_u64, 1, 500, 1000, 1500, 60_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
