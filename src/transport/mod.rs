//! Where the manager is: the [`Endpoint`] type (`tcp://`, `tls://`,
//! `unix://`) and dialling it with blocking sockets.
//!
//! This module parses and connects; it does not read or write frames and does
//! not count bytes (the runtimes do, in their `send_raw` / `recv_raw`).

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub mod tls;

/// A manager address, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp://HOST:PORT`
    Tcp { host: String, port: u16 },
    /// `tls://HOST:PORT`
    Tls { host: String, port: u16 },
    /// `unix:///path/to.sock`
    Unix(PathBuf),
}

/// How a TCP connection to the manager is set up, so that a manager that
/// vanished without a FIN or RST (a dead host, a dropped NAT entry) is
/// noticed even with heartbeats off: keepalive probes on an idle
/// connection, and `TCP_USER_TIMEOUT` on one whose data goes unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTuning {
    /// Idle time before the first keepalive probe (`None`: no keepalive).
    /// Probes follow every third of it (at least 1 s), three of them.
    pub keepalive: Option<Duration>,
    /// How long sent data (probes included) may stay unacknowledged before
    /// the kernel drops the connection (`None`: the kernel's default, many
    /// minutes).
    pub user_timeout: Option<Duration>,
}

/// Keepalive probes sent before the connection is declared dead.
pub const KEEPALIVE_PROBES: u32 = 3;

impl Default for TcpTuning {
    /// 30 s of idleness, then probes every 10 s; 300 s unacknowledged at
    /// most. Since Linux 5.11 the user timeout also ends a connection whose
    /// peer keeps its receive window shut that long (a manager that stops
    /// reading), hence minutes rather than seconds: heartbeats catch a
    /// silent manager sooner when the manager turns them on.
    fn default() -> Self {
        TcpTuning {
            keepalive: Some(Duration::from_secs(30)),
            user_timeout: Some(Duration::from_secs(300)),
        }
    }
}

impl TcpTuning {
    /// Set `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT` on a manager socket.
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        socket.set_tcp_nodelay(true)?;
        if let Some(idle) = self.keepalive {
            let every = (idle / 3).max(Duration::from_secs(1));
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(every)
                .with_retries(KEEPALIVE_PROBES);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }

    /// The longest a silently dead manager can go unnoticed on an idle
    /// connection: the keepalive idle time and its probes, or the user
    /// timeout once the probes go unanswered, whichever ends first.
    pub fn dead_peer_bound(&self) -> Option<Duration> {
        let probes = self
            .keepalive
            .map(|idle| idle + (idle / 3).max(Duration::from_secs(1)) * KEEPALIVE_PROBES);
        match (probes, self.user_timeout, self.keepalive) {
            (Some(probes), Some(user), Some(idle)) => Some(probes.min(idle + user)),
            (Some(probes), None, _) => Some(probes),
            _ => None,
        }
    }
}

/// Why an endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error(
        "endpoint {0:?} has no scheme: write tcp://HOST:PORT, tls://HOST:PORT or unix:///path"
    )]
    MissingScheme(String),
    #[error("endpoint {0:?} has an unknown scheme: use tcp://, tls:// or unix://")]
    UnknownScheme(String),
    #[error("endpoint {0:?} needs HOST:PORT (IPv6 in brackets: tcp://[::1]:7000)")]
    MissingPort(String),
    #[error("endpoint {0:?} has an invalid port (1-65535, or 0 only for listening)")]
    BadPort(String),
    #[error("endpoint {0:?} has an empty host")]
    EmptyHost(String),
    #[error("endpoint {0:?}: a unix:// path must be absolute (unix:///run/manager.sock)")]
    RelativeUnixPath(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(EndpointError::MissingScheme(text.to_owned()));
        };
        match scheme {
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(EndpointError::RelativeUnixPath(text.to_owned()));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "tcp" | "tls" => {
                let (host, port) = split_host_port(rest)
                    .ok_or_else(|| EndpointError::MissingPort(text.to_owned()))?;
                if host.is_empty() {
                    return Err(EndpointError::EmptyHost(text.to_owned()));
                }
                let port: u16 = port
                    .parse()
                    .map_err(|_| EndpointError::BadPort(text.to_owned()))?;
                let host = host.to_owned();
                Ok(if scheme == "tcp" {
                    Endpoint::Tcp { host, port }
                } else {
                    Endpoint::Tls { host, port }
                })
            }
            _ => Err(EndpointError::UnknownScheme(text.to_owned())),
        }
    }
}

/// `host:port` or `[v6]:port`; the host is returned without brackets.
fn split_host_port(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_end_matches('/');
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':')?;
        Some((host, port))
    } else {
        let (host, port) = rest.rsplit_once(':')?;
        if host.contains(':') {
            return None; // bare IPv6 without brackets is ambiguous
        }
        Some((host, port))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_port = |f: &mut fmt::Formatter<'_>, scheme: &str, host: &str, port: u16| {
            if host.contains(':') {
                write!(f, "{scheme}://[{host}]:{port}")
            } else {
                write!(f, "{scheme}://{host}:{port}")
            }
        };
        match self {
            Endpoint::Tcp { host, port } => host_port(f, "tcp", host, *port),
            Endpoint::Tls { host, port } => host_port(f, "tls", host, *port),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Resolve a TCP or TLS endpoint's addresses.
    pub fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Endpoint::Tcp { host, port } | Endpoint::Tls { host, port } => {
                Ok((host.as_str(), *port).to_socket_addrs()?.collect())
            }
            Endpoint::Unix(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a unix:// endpoint has no socket address",
            )),
        }
    }
}

/// A connected blocking stream to the manager.
#[derive(Debug)]
pub enum BlockingStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BlockingStream {
    /// Dial `endpoint`, trying each resolved address within `timeout`.
    pub fn connect(
        endpoint: &Endpoint,
        timeout: Duration,
        tuning: &TcpTuning,
    ) -> io::Result<BlockingStream> {
        match endpoint {
            // TLS runs over the TCP stream, inside the runtime (see `tls`).
            Endpoint::Tcp { .. } | Endpoint::Tls { .. } => {
                let mut last_error = None;
                for addr in endpoint.socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            tuning.apply(socket2::SockRef::from(&stream))?;
                            return Ok(BlockingStream::Tcp(stream));
                        }
                        Err(err) => last_error = Some(err),
                    }
                }
                Err(last_error.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "the host name resolved to no address",
                    )
                }))
            }
            Endpoint::Unix(path) => UnixStream::connect(path).map(BlockingStream::Unix),
        }
    }

    pub fn try_clone(&self) -> io::Result<BlockingStream> {
        Ok(match self {
            BlockingStream::Tcp(s) => BlockingStream::Tcp(s.try_clone()?),
            BlockingStream::Unix(s) => BlockingStream::Unix(s.try_clone()?),
        })
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.shutdown(how),
            BlockingStream::Unix(s) => s.shutdown(how),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_read_timeout(timeout),
            BlockingStream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.set_nonblocking(nonblocking),
            BlockingStream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }
}

impl io::Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.read(buf),
            BlockingStream::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.write(buf),
            BlockingStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket for the manager side (the loadgen and the tests).
#[derive(Debug)]
pub enum BlockingListener {
    Tcp(TcpListener),
    /// The path is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl BlockingListener {
    /// Listen on `endpoint` (`tcp://HOST:0` picks a free port). A stale Unix
    /// socket file at the path is replaced.
    pub fn bind(endpoint: &Endpoint) -> io::Result<BlockingListener> {
        match endpoint {
            Endpoint::Tcp { .. } | Endpoint::Tls { .. } => {
                let addrs = endpoint.socket_addrs()?;
                Ok(BlockingListener::Tcp(TcpListener::bind(&addrs[..])?))
            }
            Endpoint::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                Ok(BlockingListener::Unix(
                    UnixListener::bind(path)?,
                    path.clone(),
                ))
            }
        }
    }

    /// The endpoint a worker should dial (with the real port after port 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            BlockingListener::Tcp(listener) => {
                let addr = listener.local_addr()?;
                Ok(Endpoint::Tcp {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                })
            }
            BlockingListener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
        }
    }

    pub fn accept(&self) -> io::Result<BlockingStream> {
        match self {
            BlockingListener::Tcp(listener) => {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                Ok(BlockingStream::Tcp(stream))
            }
            BlockingListener::Unix(listener, _) => Ok(BlockingStream::Unix(listener.accept()?.0)),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            BlockingListener::Tcp(listener) => listener.set_nonblocking(nonblocking),
            BlockingListener::Unix(listener, _) => listener.set_nonblocking(nonblocking),
        }
    }
}

impl Drop for BlockingListener {
    fn drop(&mut self) {
        if let BlockingListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_and_prints_it_back() {
        for text in [
            "tcp://127.0.0.1:7000",
            "tls://manager.example:443",
            "unix:///run/m.sock",
            "tcp://[::1]:9",
        ] {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.to_string(), text);
        }
        assert_eq!(
            "tcp://[::1]:9".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
    }

    #[test]
    fn refuses_malformed_endpoints_with_a_reason() {
        let cases = [
            ("127.0.0.1:7000", "no scheme"),
            ("http://x:1", "unknown scheme"),
            ("tcp://host", "needs HOST:PORT"),
            ("tcp://host:99999", "invalid port"),
            ("tcp://:80", "empty host"),
            ("unix://relative.sock", "must be absolute"),
            ("tcp://::1:80", "needs HOST:PORT"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
