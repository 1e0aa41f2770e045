//! The agent's HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/status`.
//!
//! One small thread with its own epoll loop, so a scrape never runs on an
//! event loop. Everything a client controls is bounded: at most
//! [`MAX_CONNECTIONS`] open at once (a new one evicts the oldest), a request
//! head of at most [`MAX_REQUEST`] bytes (431 past that), and
//! [`CONNECTION_DEADLINE`] for the whole exchange, so a client that opens
//! many connections or sends an endless header cannot hold the listener or
//! grow its memory. One request per connection (`Connection: close`).
//!
//! `/metrics` is gzipped when the request's `Accept-Encoding` allows gzip, as
//! Prometheus' scrapes do (`Content-Encoding: gzip`, `Vary: Accept-Encoding`);
//! everything else, and a client that does not ask, gets identity bytes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::metrics::Telemetry;

/// Connections served at once; further ones are closed at accept.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest a connection may take, from accept to the last byte written.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// How often histograms are folded even when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// A running listener; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    /// Bind `addr` (errors are returned here, not logged later) and serve.
    pub fn start(addr: SocketAddr, telemetry: Arc<Telemetry>) -> io::Result<HttpServer> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(poll, listener, &telemetry, &thread_stop))?;
        Ok(HttpServer {
            addr,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port after `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut poll: Poll, listener: TcpListener, telemetry: &Telemetry, stop: &AtomicBool) {
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<Conn>> = (0..MAX_CONNECTIONS).map(|_| None).collect();
    let mut last_upkeep = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let next_deadline = conns.iter().flatten().map(|c| c.deadline).min();
        let timeout = next_deadline
            .map_or(UPKEEP_EVERY, |d| d.saturating_duration_since(now))
            .min(UPKEEP_EVERY);
        if let Err(err) = poll.poll(&mut events, Some(timeout)) {
            if err.kind() != io::ErrorKind::Interrupted {
                tracing::error!("metrics listener stopped: {err}");
                return;
            }
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_all(&listener, &poll, &mut conns),
                WAKER => {}
                Token(slot) => {
                    if let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) {
                        if !progress(conn, telemetry) {
                            close(&poll, &mut conns[slot]);
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        for slot in conns.iter_mut() {
            if slot.as_ref().is_some_and(|c| now >= c.deadline) {
                close(&poll, slot);
            }
        }
        if now.duration_since(last_upkeep) >= UPKEEP_EVERY {
            telemetry.upkeep();
            last_upkeep = now;
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut [Option<Conn>]) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // Full: evict the oldest connection, so a flood of idle
                // connections cannot lock a real scraper out.
                let slot = match conns.iter().position(Option::is_none) {
                    Some(slot) => slot,
                    None => {
                        let oldest = conns
                            .iter()
                            .enumerate()
                            .filter_map(|(i, c)| c.as_ref().map(|c| (c.deadline, i)))
                            .min()
                            .map_or(0, |(_, i)| i);
                        close(poll, &mut conns[oldest]);
                        oldest
                    }
                };
                if poll
                    .registry()
                    .register(
                        &mut stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    conns[slot] = Some(Conn {
                        stream,
                        request: Vec::new(),
                        response: Vec::new(),
                        written: 0,
                        deadline: Instant::now() + CONNECTION_DEADLINE,
                    });
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn close(poll: &Poll, slot: &mut Option<Conn>) {
    if let Some(mut conn) = slot.take() {
        let _ = poll.registry().deregister(&mut conn.stream);
    }
}

/// Read the request, answer it, write the answer. False when done or broken.
fn progress(conn: &mut Conn, telemetry: &Telemetry) -> bool {
    if conn.response.is_empty() {
        let mut chunk = [0u8; 1024];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.request.extend_from_slice(&chunk[..n]);
                    // The head and its blank line must fit in MAX_REQUEST,
                    // however the bytes were split into reads.
                    let end = find_head_end(&conn.request).filter(|&end| end + 4 <= MAX_REQUEST);
                    if let Some(end) = end {
                        conn.response = respond(&conn.request[..end], telemetry);
                        break;
                    }
                    if conn.request.len() >= MAX_REQUEST {
                        conn.response = response(431, "text/plain", b"request header too large\n");
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
    while conn.written < conn.response.len() {
        match conn.stream.write(&conn.response[conn.written..]) {
            Ok(0) => return false,
            Ok(n) => conn.written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    false
}

fn find_head_end(request: &[u8]) -> Option<usize> {
    request.windows(4).position(|w| w == b"\r\n\r\n")
}

fn respond(head: &[u8], telemetry: &Telemetry) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return response(405, "text/plain", b"only GET and HEAD\n");
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let full = match path {
        b"/metrics" => {
            let text = telemetry.render_metrics();
            let content_type = "text/plain; version=0.0.4; charset=utf-8";
            match accepts_gzip(head).then(|| gzip(text.as_bytes())).flatten() {
                Some(body) => response_with(
                    200,
                    content_type,
                    &["Content-Encoding: gzip", "Vary: Accept-Encoding"],
                    &body,
                ),
                None => response_with(
                    200,
                    content_type,
                    &["Vary: Accept-Encoding"],
                    text.as_bytes(),
                ),
            }
        }
        b"/healthz" => response(200, "text/plain", b"ok\n"),
        b"/readyz" => {
            if telemetry.ready() {
                response(200, "text/plain", b"ready\n")
            } else {
                response(
                    503,
                    "text/plain",
                    b"no session has completed its handshake\n",
                )
            }
        }
        b"/status" => response(
            200,
            "application/json",
            telemetry.render_status().as_bytes(),
        ),
        _ => response(
            404,
            "text/plain",
            b"not found: try /metrics /healthz /readyz /status\n",
        ),
    };
    if method == b"HEAD" {
        let head_len = find_head_end(&full).map_or(full.len(), |end| end + 4);
        full[..head_len].to_vec()
    } else {
        full
    }
}

/// Whether the request head's `Accept-Encoding` allows gzip: `gzip` (or
/// `x-gzip`, or `*` when gzip is not named) with a quality above 0.
fn accepts_gzip(head: &[u8]) -> bool {
    let Ok(head) = std::str::from_utf8(head) else {
        return false;
    };
    let mut gzip = None;
    let mut any = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("accept-encoding") {
            continue;
        }
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let quality = parts
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
            let accepted = quality.is_some_and(|q| q > 0.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(accepted);
            } else if coding == "*" {
                any = Some(accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// `body` gzipped at the fastest level: a scrape is compressed once and read
/// once, and the fast level already shrinks the exposition about tenfold.
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    use flate2::write::GzEncoder;
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, content_type, &[], body)
}

fn response_with(status: u16, content_type: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n");
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_only_when_the_request_allows_it() {
        let head = |encoding: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{encoding}");
        for (encoding, wanted) in [
            ("Accept-Encoding: gzip", true),
            ("accept-encoding: deflate, GZIP;q=0.5", true),
            ("Accept-Encoding: x-gzip", true),
            ("Accept-Encoding: *", true),
            ("Accept-Encoding: gzip;q=0", false),
            ("Accept-Encoding: gzip; q=0.000", false),
            ("Accept-Encoding: *, gzip;q=0", false),
            ("Accept-Encoding: identity", false),
            ("Accept-Encoding: br, deflate", false),
            ("Accept-Encoding: gzip;q=oops", false),
            ("X-Accept-Encoding: gzip", false),
            ("User-Agent: gzip", false),
            ("", false),
        ] {
            assert_eq!(
                accepts_gzip(head(encoding).as_bytes()),
                wanted,
                "{encoding:?}"
            );
        }
    }
}
