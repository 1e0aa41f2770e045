//! The TASK body: the checks of PROTOCOL.md "Tasks" on the handler name
//! ([`split_task_body`]), the [`TaskRequest`] borrowed from a checked body,
//! and the encoder managers and tests use ([`encode_task_body`]).
//!
//! Pure functions of the bytes given: they never panic on peer input and
//! never touch a machine's state.

use super::TaskRequest;
use crate::protocol::frame::MAX_HANDLER_NAME;

/// The task in a TASK `body` whose name [`task_name_len`] checked.
#[inline]
pub(super) fn task_request(
    id: u64,
    body: &[u8],
    name_len: usize,
    ack_requested: bool,
) -> TaskRequest<'_> {
    let (name, payload) = body.get(1..).unwrap_or_default().split_at(name_len);
    TaskRequest {
        id,
        handler: name,
        payload,
        ack_requested,
    }
}

/// Split a TASK body into the handler name and payload ranges, checking the
/// rules of PROTOCOL.md "Tasks". A name must be 1..=64 printable ASCII
/// characters (0x20..=0x7E, the space included).
pub fn split_task_body(
    body: &[u8],
) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), String> {
    let name_len = task_name_len(body).ok_or_else(|| task_body_error(body))?;
    Ok((1..1 + name_len, 1 + name_len..body.len()))
}

/// The `name_len` of a TASK body whose name passes the checks of
/// [`split_task_body`]; `None` if it does not ([`task_body_error`] says why).
#[inline(always)]
pub(super) fn task_name_len(body: &[u8]) -> Option<usize> {
    let (&name_len, rest) = body.split_first()?;
    let name_len = name_len as usize;
    let name = rest.get(..name_len)?;
    (name_len != 0
        && name_len <= MAX_HANDLER_NAME
        && name.iter().all(|&b| (0x20..=0x7e).contains(&b)))
    .then_some(name_len)
}

/// Why [`task_name_len`] refused `body`.
#[cold]
pub(super) fn task_body_error(body: &[u8]) -> String {
    let Some((&name_len, rest)) = body.split_first() else {
        return "TASK body is empty: no name_len".to_owned();
    };
    let name_len = name_len as usize;
    if name_len == 0 || name_len > MAX_HANDLER_NAME {
        return format!("TASK name_len {name_len} is outside 1..=64");
    }
    if rest.len() < name_len {
        return format!(
            "TASK body of {} bytes is shorter than 1 + name_len {name_len}",
            body.len()
        );
    }
    "TASK handler name is not printable ASCII".to_owned()
}

/// Encode a TASK body (for managers and tests).
pub fn encode_task_body(out: &mut Vec<u8>, handler: &str, payload: &[u8]) {
    out.push(handler.len() as u8);
    out.extend_from_slice(handler.as_bytes());
    out.extend_from_slice(payload);
}
