//! Byte counts for humans (binary units, three significant digits), and
//! text from the manager made safe to log.

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

/// Longest text taken from the manager (an ERROR message, the WELCOME
/// `manager` name) that is kept, logged or shown in `/status`, in bytes.
pub const MAX_PEER_TEXT: usize = 256;

/// Text that came from the peer, made safe to keep and log: at most `max`
/// bytes of it (cut at a character boundary, then ` [+N bytes]`), with
/// control characters and the bidirectional overrides that could forge a log
/// line or rewrite a terminal written as escapes (`\n`, `\u{1b}`).
///
/// ```
/// use ringworker::format::peer_text;
/// assert_eq!(peer_text("fine\nFAKE LINE", 64), "fine\\nFAKE LINE");
/// assert_eq!(peer_text("abcdef", 3), "abc [+3 bytes]");
/// ```
pub fn peer_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    let mut taken = 0;
    for (at, c) in text.char_indices() {
        let unsafe_char = c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        let before = out.len();
        if unsafe_char {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            break;
        }
        taken = at + c.len_utf8();
    }
    if taken < text.len() {
        out.push_str(&format!(" [+{} bytes]", text.len() - taken));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{format_bytes, peer_text, MAX_PEER_TEXT};

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

    #[test]
    fn peer_text_escapes_what_could_forge_a_line_and_caps_the_length() {
        assert_eq!(peer_text("plain manager-1", 64), "plain manager-1");
        assert_eq!(
            peer_text("m\n2026-12-06T00:00:00Z ERROR fake\r\u{1b}[2J", 256),
            "m\\n2026-12-06T00:00:00Z ERROR fake\\r\\u{1b}[2J"
        );
        assert_eq!(peer_text("a\u{202e}b\u{85}", 64), "a\\u{202e}b\\u{85}");
        // Non-ASCII text that is not a control character stays as it is.
        assert_eq!(peer_text("gestionnaire-é", 64), "gestionnaire-é");
        let long = "x".repeat(1 << 20);
        let kept = peer_text(&long, MAX_PEER_TEXT);
        assert_eq!(
            kept,
            format!("{} [+{} bytes]", "x".repeat(256), (1 << 20) - 256)
        );
        // A cut never splits a character or an escape.
        assert_eq!(peer_text("ééé", 5), "éé [+2 bytes]");
        assert_eq!(peer_text("ab\ncd", 3), "ab [+3 bytes]");
        assert!(!peer_text(&"\n".repeat(1000), MAX_PEER_TEXT).contains('\n'));
    }
}
