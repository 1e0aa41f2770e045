//! The reference epoll worker for benchmarks: the ringworker protocol for
//! `echo` and `sink`, written the way a good tokio programmer would. A
//! multi-thread runtime, one task per session, a 64 KiB read buffer reused
//! for the connection's life, every frame in a read parsed in place, all
//! their RESULTs appended to one output buffer and written with one
//! `write_all`, no allocation per frame. It speaks enough of the protocol for
//! the loadgen to verify it: HELLO / WELCOME, TASK / RESULT, PING / PONG,
//! DRAIN and a GOODBYE with exact byte counts.
//!
//! Command line (the loadgen's `--spawn` passes it):
//! `epoll-reference run --manager tcp://HOST:PORT --sessions N [--threads N] [ignored flags]`.
//! SIGTERM drains every session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const HEADER: usize = 16;
const TASK: u8 = 0x10;
const RESULT: u8 = 0x12;
const PING: u8 = 0x20;
const PONG: u8 = 0x21;
const DRAIN: u8 = 0x30;
const GOODBYE: u8 = 0x31;
const WELCOME: u8 = 0x02;
const HELLO: u8 = 0x01;
const FAILED: u8 = 0x01;

fn header(out: &mut Vec<u8>, kind: u8, flags: u8, id: u64, body_len: usize) {
    out.extend_from_slice(&((body_len + 12) as u32).to_be_bytes());
    out.extend_from_slice(&[kind, flags, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
        })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let manager =
        arg(&args, "--manager").ok_or_else(|| std::io::Error::other("--manager is required"))?;
    let address = manager
        .strip_prefix("tcp://")
        .ok_or_else(|| std::io::Error::other("only tcp:// endpoints"))?
        .to_owned();
    let sessions: u32 = arg(&args, "--sessions")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let threads: usize = arg(&args, "--threads")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let draining = Arc::new(AtomicBool::new(false));
        let drain_now = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for index in 0..sessions {
            let address = address.clone();
            let draining = draining.clone();
            let drain_now = drain_now.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(err) = session(index, &address, &draining, &drain_now).await {
                    eprintln!("epoll-reference: session {index}: {err}");
                }
            }));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {
                draining.store(true, Ordering::SeqCst);
                drain_now.notify_waiters();
            }
            _ = async { for task in &mut tasks { let _ = task.await; } } => {}
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    })
}

async fn session(
    index: u32,
    address: &str,
    draining: &AtomicBool,
    drain_now: &Notify,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sent, mut received) = (0u64, 0u64);
    let hello = serde_json::json!({
        "protocol": 1, "worker": "epoll-reference", "session": index, "runtime": "epoll",
        "max_body": 16 * 1024 * 1024, "max_in_flight": 1024, "handlers": ["echo", "sink"],
    })
    .to_string();
    let mut out = Vec::with_capacity(64 * 1024);
    header(&mut out, HELLO, 0, 0, hello.len());
    out.extend_from_slice(hello.as_bytes());
    stream.write_all(&out).await?;
    sent += out.len() as u64;
    out.clear();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut welcomed = false;
    let mut drain_sent = false;
    loop {
        // Parse every whole frame buffered.
        let mut goodbye = false;
        while end - start >= HEADER {
            let len =
                u32::from_be_bytes([buf[start], buf[start + 1], buf[start + 2], buf[start + 3]])
                    as usize;
            let total = len + 4;
            if start + total > buf.len() {
                // Make room: move the partial frame to the front, and grow
                // once if the frame is larger than the buffer.
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                if total > buf.len() {
                    buf.resize(total, 0);
                }
            }
            if end - start < total {
                break;
            }
            let kind = buf[start + 4];
            let id = u64::from_be_bytes(buf[start + 8..start + 16].try_into().unwrap_or([0; 8]));
            let body = &buf[start + HEADER..start + total];
            match kind {
                WELCOME => welcomed = true,
                TASK => {
                    let name_len = body.first().copied().unwrap_or(0) as usize;
                    let name = body.get(1..1 + name_len).unwrap_or_default();
                    let payload = body.get(1 + name_len..).unwrap_or_default();
                    if drain_sent {
                        let failed = br#"{"code":"draining","message":"draining"}"#;
                        header(&mut out, RESULT, FAILED, id, failed.len());
                        out.extend_from_slice(failed);
                    } else if name == b"echo" {
                        header(&mut out, RESULT, 0, id, payload.len());
                        out.extend_from_slice(payload);
                    } else if name == b"sink" {
                        header(&mut out, RESULT, 0, id, 0);
                    } else {
                        let failed =
                            br#"{"code":"unknown_handler","message":"echo and sink only"}"#;
                        header(&mut out, RESULT, FAILED, id, failed.len());
                        out.extend_from_slice(failed);
                    }
                }
                PING => header(&mut out, PONG, 0, id, 0),
                DRAIN => goodbye = true,
                _ => {}
            }
            start += total;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 && buf.len() - end < HEADER {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let stopping = draining.load(Ordering::Relaxed) && welcomed;
        if stopping && !drain_sent {
            header(&mut out, DRAIN, 0, 0, 0);
            drain_sent = true;
        }
        if goodbye || stopping {
            // Nothing is ever in flight here: answer, then GOODBYE.
            stream.write_all(&out).await?;
            sent += out.len() as u64;
            out.clear();
            let body = format!(r#"{{"bytes_sent":{sent},"bytes_received":{received}}}"#);
            header(&mut out, GOODBYE, 0, 0, body.len());
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out).await?;
            stream.shutdown().await?;
            // Read to EOF so the manager's last bytes are not met with a reset.
            while stream.read(&mut buf).await? > 0 {}
            return Ok(());
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            sent += out.len() as u64;
            out.clear();
        }
        let n = tokio::select! {
            n = stream.read(&mut buf[end..]) => n?,
            _ = drain_now.notified() => continue,
        };
        if n == 0 {
            return Ok(());
        }
        received += n as u64;
        end += n;
    }
}
