//! Byte counts for humans: binary units, three significant digits.

/// `512 B`, `1.50 KiB`, `37.5 MiB`, `1.21 GiB`, `512 KiB`.
///
/// ```
/// use ringworker::format::format_bytes;
/// assert_eq!(format_bytes(1_299_227_607), "1.21 GiB");
/// assert_eq!(format_bytes(39_321_600), "37.5 MiB");
/// ```
///
/// Below 1 KiB the exact count is shown; above, the largest binary unit that
/// keeps the value at least 1, rounded to three significant digits (four
/// between 1000 and 1023 of a unit).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // Round as it will be printed; a value that rounds up to 1024 moves to the next unit.
    let decimals = if value < 9.995 {
        2
    } else if value < 99.95 {
        1
    } else {
        0
    };
    let scale = 10f64.powi(decimals);
    let rounded = (value * scale).round() / scale;
    if rounded >= 1024.0 && unit + 1 < UNITS.len() {
        return format!("{:.2} {}", rounded / 1024.0, UNITS[unit + 1]);
    }
    format!("{rounded:.prec$} {}", UNITS[unit], prec = decimals as usize)
}

#[cfg(test)]
mod tests {
    use super::format_bytes;

    #[test]
    fn examples_from_the_contract() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(39_321_600), "37.5 MiB");
        assert_eq!(format_bytes(1_299_227_607), "1.21 GiB");
        assert_eq!(format_bytes(512 * 1024), "512 KiB");
    }

    #[test]
    fn rounding_carries_into_the_next_precision_and_unit() {
        assert_eq!(format_bytes(10_235), "10.0 KiB"); // 9.995 KiB rounds to 10.0, not 10.00
        assert_eq!(format_bytes(102_350), "100 KiB"); // 99.95 KiB
        assert_eq!(format_bytes(1024 * 1024 - 1), "1.00 MiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }
}
