//! Time values on the command line: bare numbers keep their old meaning
//! (seconds, or milliseconds for the `-ms` options), and anything with units
//! is read by `humantime` (`500ms`, `10s`, `2m`, `1h 30m`).

use std::time::Duration;

/// The longest time any option takes: a year.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

const EXAMPLES: &str = "500ms, 10s, 2m, 1h30m";

/// Parse `text` as a duration: a bare number is `bare_unit`s (fractions
/// allowed), anything else goes to `humantime`. At most [`MAX`].
fn parse(text: &str, bare_unit: Duration, bare_name: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let parsed = match trimmed.parse::<f64>() {
        Ok(number) if number.is_finite() && number >= 0.0 => {
            let secs = number * bare_unit.as_secs_f64();
            if secs > MAX.as_secs_f64() {
                return Err(too_long(text));
            }
            Duration::from_secs_f64(secs)
        }
        Ok(number) if number < 0.0 => {
            return Err(format!(
                "{text:?} is not a duration (negative): give {bare_name} or units ({EXAMPLES})"
            ))
        }
        Ok(_) => {
            return Err(format!(
                "{text:?} is not a duration: give {bare_name} or units ({EXAMPLES})"
            ))
        }
        Err(_) => humantime::parse_duration(trimmed).map_err(|err| {
            let why = match err {
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!("unknown unit {unit:?}")
                }
                other => other.to_string(),
            };
            format!("{text:?} is not a duration ({why}): give {bare_name} or units ({EXAMPLES})")
        })?,
    };
    if parsed > MAX {
        return Err(too_long(text));
    }
    Ok(parsed)
}

fn too_long(text: &str) -> String {
    format!("{text:?} is longer than a year")
}

/// A duration whose bare numbers are seconds (`2.5`), or with units (`10s`).
///
/// ```
/// use std::time::Duration;
/// use ringworker_loadgen::duration::seconds;
/// assert_eq!(seconds("10s"), Ok(Duration::from_secs(10)));
/// assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
/// assert!(seconds("ten").is_err());
/// ```
pub fn seconds(text: &str) -> Result<Duration, String> {
    parse(text, Duration::from_secs(1), "seconds (2.5)")
}

/// As [`seconds`], more than zero.
pub fn positive_seconds(text: &str) -> Result<Duration, String> {
    let parsed = seconds(text)?;
    if parsed.is_zero() {
        return Err(format!("{text:?} is zero: give a time above 0"));
    }
    Ok(parsed)
}

/// A duration whose bare numbers are milliseconds (`250`), or with units
/// (`2s`), as a whole number of milliseconds.
pub fn millis(text: &str) -> Result<u64, String> {
    let parsed = parse(text, Duration::from_millis(1), "milliseconds (250)")?;
    if parsed.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{text:?} is not a whole number of milliseconds"));
    }
    Ok(parsed.as_millis() as u64)
}

/// Milliseconds as `--heartbeat-ms` takes them: a whole number that fits
/// WELCOME's 32-bit field.
pub fn millis_u32(text: &str) -> Result<u32, String> {
    let ms = millis(text)?;
    u32::try_from(ms).map_err(|_| format!("{text:?} is over {} ms", u32::MAX))
}

/// A number of milliseconds or a range of them (`50`, `1..10`, `5ms..2s`),
/// as `--sleep-ms` takes it: each end at most 60 s, what the `sleep`
/// handler accepts.
pub fn millis_range(text: &str) -> Result<crate::workload::PayloadSpec, String> {
    let end = |part: &str| -> Result<usize, String> {
        let ms = millis(part)?;
        if ms > 60_000 {
            return Err(format!("{part:?} is over the sleep handler's 60 s"));
        }
        Ok(ms as usize)
    };
    crate::workload::PayloadSpec::parse_with(text, "the range", end)
}

/// A short human form of a duration for progress lines: `4.2 s`, `3m 05s`,
/// `2h 01m`.
pub fn short(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let whole = d.as_secs();
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        let whole = d.as_secs();
        format!("{}h {:02}m", whole / 3600, whole % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_units_and_bare_numbers() {
        let ms = Duration::from_millis;
        assert_eq!(seconds("500ms"), Ok(ms(500)));
        assert_eq!(seconds("10s"), Ok(ms(10_000)));
        assert_eq!(seconds("2m"), Ok(ms(120_000)));
        assert_eq!(seconds("1h 30m"), Ok(ms(5_400_000)));
        assert_eq!(seconds("1m30s"), Ok(ms(90_000)));
        assert_eq!(seconds("10"), Ok(ms(10_000)));
        assert_eq!(seconds("0.5"), Ok(ms(500)));
        assert_eq!(seconds(" 3 "), Ok(ms(3_000)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert_eq!(seconds("365days"), Ok(MAX));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for bad in ["", "ten", "10x", "-1", "nan", "inf", "1e400", "s"] {
            let err = seconds(bad).expect_err(bad);
            assert!(
                err.contains("not a duration") || err.contains("longer"),
                "{bad}: {err}"
            );
            assert!(err.starts_with(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(
            seconds("10x").unwrap_err().contains("10s"),
            "examples given"
        );
        assert!(seconds("2years")
            .unwrap_err()
            .contains("longer than a year"));
        assert!(seconds("31536001")
            .unwrap_err()
            .contains("longer than a year"));
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("0ms").is_err());
        assert_eq!(positive_seconds("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn milliseconds_take_units_and_bare_numbers() {
        assert_eq!(millis("250"), Ok(250));
        assert_eq!(millis("2s"), Ok(2000));
        assert_eq!(millis("1m"), Ok(60_000));
        assert!(millis("1.5").is_err(), "not whole milliseconds");
        assert!(millis("500us").is_err());
        assert_eq!(millis_u32("0"), Ok(0));
        assert!(millis_u32("50days").is_err());
        let range = millis_range("5ms..2s").unwrap();
        assert_eq!((range.min, range.max), (5, 2000));
        let one = millis_range("50").unwrap();
        assert_eq!((one.min, one.max), (50, 50));
        assert_eq!(
            millis_range("2s..5ms"),
            Err("the range \"2s..5ms\" is empty".to_owned())
        );
        assert!(millis_range("61s").is_err());
    }

    #[test]
    fn short_forms() {
        assert_eq!(short(Duration::from_millis(4_240)), "4.2 s");
        assert_eq!(short(Duration::from_secs(185)), "3m 05s");
        assert_eq!(short(Duration::from_secs(7_260)), "2h 01m");
    }
}
