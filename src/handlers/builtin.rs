//! The built-in handlers of PROTOCOL.md, each with an exact, checkable result.

use std::time::Duration;

use super::{Handler, Reply, TaskFailure};
use sha2::Digest;

/// Longest `sleep` a task may ask for.
pub const SLEEP_MAX_MS: u32 = 60_000;

/// `echo`: the payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        out.extend_from_slice(payload);
        Ok(Reply::Ready)
    }
}

/// `sink`: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

impl Handler for Sink {
    fn call(&self, _payload: &[u8], _out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        Ok(Reply::Ready)
    }
}

/// `crc32c`: CRC-32C (Castagnoli) of the payload, 4 bytes big-endian.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32c;

impl Handler for Crc32c {
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        Ok(Reply::Ready)
    }
}

/// `sha256`: the 32-byte SHA-256 digest of the payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sha256;

impl Handler for Sha256 {
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        out.extend_from_slice(&sha2::Sha256::digest(payload));
        Ok(Reply::Ready)
    }
}

/// `sleep`: payload is a big-endian `u32` of milliseconds (at most 60000);
/// answers empty after that delay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

impl Handler for Sleep {
    fn call(&self, payload: &[u8], _out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(TaskFailure::bad_payload(format!(
                "sleep takes a 4-byte big-endian u32 of milliseconds, got {} bytes",
                payload.len()
            )));
        };
        let ms = u32::from_be_bytes(bytes);
        if ms > SLEEP_MAX_MS {
            return Err(TaskFailure::bad_payload(format!(
                "sleep of {ms} ms exceeds the limit of {SLEEP_MAX_MS} ms"
            )));
        }
        Ok(Reply::After(Duration::from_millis(ms.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(handler: &dyn Handler, payload: &[u8]) -> (Result<Reply, TaskFailure>, Vec<u8>) {
        let mut out = Vec::new();
        let reply = handler.call(payload, &mut out);
        (reply, out)
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC catalogue's check value for CRC-32/ISCSI over "123456789".
        assert_eq!(run(&Crc32c, b"123456789").1, 0xE306_9283u32.to_be_bytes());
        assert_eq!(run(&Crc32c, b"").1, [0, 0, 0, 0]);
    }

    #[test]
    fn sha256_matches_fips_180_vectors() {
        let abc = run(&Sha256, b"abc").1;
        assert_eq!(
            hex(&abc),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let empty = run(&Sha256, b"").1;
        assert_eq!(
            hex(&empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn echo_and_sink() {
        assert_eq!(run(&Echo, b"hello").1, b"hello");
        assert_eq!(run(&Sink, b"hello").1, b"");
    }

    #[test]
    fn sleep_parses_milliseconds_and_refuses_bad_payloads() {
        assert_eq!(
            run(&Sleep, &500u32.to_be_bytes()).0,
            Ok(Reply::After(Duration::from_millis(500)))
        );
        assert_eq!(run(&Sleep, &[0, 0, 1]).0.unwrap_err().code, "bad_payload");
        assert_eq!(
            run(&Sleep, &60_001u32.to_be_bytes()).0.unwrap_err().code,
            "bad_payload"
        );
        assert!(run(&Sleep, &60_000u32.to_be_bytes()).0.is_ok());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
