//! JSON-aware mutations shared by the [`handshake`](super::handshake()) and
//! [`manager`](super::manager()) targets: numbers and strings a field may
//! hold (valid or not), whole-body damage, and ERROR bodies built field by
//! field, each with what a correct peer must make of it. It only builds
//! bytes from the input and must never decide what a target asserts.

use super::Input;

/// A JSON number the fuzzer picked, and its value when it is one a `u32`
/// field accepts.
pub(super) fn json_number(input: &mut Input<'_>) -> (String, Option<u32>) {
    const PLAIN: [u32; 10] = [0, 1, 2, 63, 64, 65, 512, 65535, 1 << 24, u32::MAX];
    match input.byte() % 16 {
        0..=7 => {
            let n = input.pick(&PLAIN);
            (n.to_string(), Some(n))
        }
        8 | 9 => {
            let n = u32::from(input.u16());
            (n.to_string(), Some(n))
        }
        10 => (
            input
                .pick(&["4294967296", "18446744073709551616", "-1"])
                .into(),
            None,
        ),
        11 => (
            input.pick(&["1.5", "1e3", "1e400", "-0", "0.0"]).into(),
            None,
        ),
        12 => (input.pick(&["\"1\"", "null", "true"]).into(), None),
        13 => (input.pick(&["[]", "{}", "[1]", "{\"a\":1}"]).into(), None),
        14 => (" 1 ".into(), Some(1)),
        _ => ("1".into(), Some(1)),
    }
}

/// A JSON value for a string field, and the string when it is one.
pub(super) fn json_string(input: &mut Input<'_>) -> (Vec<u8>, Option<String>) {
    let text: String = match input.byte() % 16 {
        0 => String::new(),
        1 | 2 => "manager-1".into(),
        // The ERROR codes that refuse a worker for good.
        3 => crate::protocol::codes::UNAUTHORIZED.into(),
        4 => crate::protocol::codes::UNSUPPORTED_VERSION.into(),
        5 | 6 => {
            let n = usize::from(input.byte() % 48);
            String::from_utf8_lossy(input.bytes(n)).into_owned()
        }
        7 => "line\nFAKE LOG LINE\r\u{1b}[31mred\u{7}".into(),
        8 => "\u{202e}desrever\u{2066}x\u{200f}".into(),
        9 => "x".repeat(usize::from(input.u16() % 6000)),
        10 => "é€😀".repeat(usize::from(input.byte())),
        11 => return (b"12".to_vec(), None),
        12 => return (b"null".to_vec(), None),
        13 => return (b"[\"a\"]".to_vec(), None),
        14 => {
            // Bytes that are not UTF-8, unescaped inside the quotes.
            let mut raw = b"\"bad ".to_vec();
            raw.extend_from_slice(&[0xff, 0xfe, 0xc0, input.byte()]);
            raw.push(b'"');
            return (raw, None);
        }
        _ => "\\u0000 escapes \\ \" \u{0}".into(),
    };
    let quoted = serde_json::to_vec(&text).unwrap_or_default();
    (quoted, Some(text))
}

/// Whole-body damage: the body is no longer a JSON object.
pub(super) fn json_damage(input: &mut Input<'_>, body: &mut Vec<u8>) {
    let at = usize::from(input.u16()) % (body.len() + 1);
    match input.byte() % 6 {
        0 => body.truncate(at.min(body.len().saturating_sub(1))),
        1 => body.extend_from_slice(b"x"),
        2 => {
            body.insert(0, b'[');
            body.push(b']');
        }
        3 => {
            *body = b"[".repeat(200);
        }
        4 => body.insert(at, 0xff),
        _ => {
            *body = input
                .pick(&[&b""[..], b"null", b"1", b"\"{}\"", b"{"])
                .to_vec()
        }
    }
}

/// An ERROR body built field by field, and the code and message the worker
/// must report for it (`unknown` when it does not parse).
pub(super) fn error_body(input: &mut Input<'_>) -> (Vec<u8>, Option<(String, String)>) {
    let flags = input.byte();
    let (code, code_text) = json_string(input);
    let (message, message_text) = json_string(input);
    let mut body = b"{\"code\":".to_vec();
    body.extend_from_slice(&code);
    body.extend_from_slice(b",\"message\":");
    body.extend_from_slice(&message);
    if flags & 1 != 0 {
        body.extend_from_slice(b",\"retry\":false");
    }
    body.push(b'}');
    let mut parsed = code_text.zip(message_text);
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        parsed = None;
    }
    (body, parsed)
}
