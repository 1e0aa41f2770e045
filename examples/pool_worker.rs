//! An echo worker for a ringworker `pool` handler, standard library only
//! (docs/HANDLER_PROTOCOL.md).
//!
//! Reads TASK frames on the descriptor named by `RINGWORKER_HANDLER_FD`
//! and answers each with a RESULT holding its payload; exits at end of
//! file. Build it with `cargo build --release --example pool_worker` and
//! declare it:
//!
//! ```toml
//! [handlers.echo-pool]
//! mode = "pool"
//! command = ["/path/to/target/release/examples/pool_worker"]
//! processes = 4
//! ```

use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

const TASK: u8 = 0x01;
const RESULT: u8 = 0x02;

fn main() -> std::io::Result<()> {
    let fd: i32 = std::env::var("RINGWORKER_HANDLER_FD")
        .ok()
        .and_then(|fd| fd.parse().ok())
        .unwrap_or(3);
    // SAFETY: the agent opened this descriptor for this process alone and
    // nothing else in it uses it.
    #[allow(unsafe_code)]
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let mut input = BufReader::new(stream.try_clone()?);
    let mut output = BufWriter::new(stream);
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        frame.resize(u32::from_be_bytes(len) as usize, 0);
        input.read_exact(&mut frame)?;
        if frame.len() < 13 || frame[0] != TASK {
            return Err(std::io::Error::other("not a TASK frame"));
        }
        // kind, id (8 bytes), deadline_ms (4 bytes), payload.
        let (id, payload) = (&frame[1..9], &frame[13..]);
        output.write_all(&(9 + payload.len() as u32).to_be_bytes())?;
        output.write_all(&[RESULT])?;
        output.write_all(id)?;
        output.write_all(payload)?;
        // Answer now unless more tasks are already waiting to be read.
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}
