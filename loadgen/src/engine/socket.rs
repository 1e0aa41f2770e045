//! The sockets of a run: the [`Listener`] the agents dial and the accepted
//! [`Stream`]s, TCP or Unix, both non-blocking and registered with mio.
//!
//! This module only opens, reads, writes and shuts sockets; it never counts
//! bytes (the callers do, at the one place each direction is read or
//! written) and never interprets them.

use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use ringworker::transport::Endpoint;

/// Listen backlog (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 65_535;

#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listen on `endpoint`; a stale Unix socket file is replaced.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp { .. } | Endpoint::Tls { .. } => {
                let addr = endpoint.socket_addrs()?.into_iter().next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address")
                })?;
                // A deep accept queue: thousands of sessions dial at once, and
                // a SYN dropped by a full queue costs its sender a 1 s retransmit.
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                socket.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(socket.into())))
            }
            Endpoint::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                let socket =
                    socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                socket.bind(&socket2::SockAddr::unix(path)?)?;
                socket.listen(LISTEN_BACKLOG)?;
                socket.set_nonblocking(true)?;
                let listener: std::os::unix::net::UnixListener =
                    std::os::fd::OwnedFd::from(socket).into();
                Ok(Listener::Unix(UnixListener::from_std(listener)))
            }
        }
    }

    pub(super) fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    /// Register with `registry` for readability under `token`.
    pub(super) fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> io::Result<()> {
        let interest = mio::Interest::READABLE;
        match self {
            Listener::Tcp(l) => registry.register(l, token, interest),
            Listener::Unix(l) => registry.register(l, token, interest),
        }
    }

    pub fn local_endpoint(&self, requested: &Endpoint) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => {
                let addr = l.local_addr()?;
                let (host, port) = (addr.ip().to_string(), addr.port());
                Ok(match requested {
                    Endpoint::Tls { .. } => Endpoint::Tls { host, port },
                    _ => Endpoint::Tcp { host, port },
                })
            }
            Listener::Unix(_) => Ok(requested.clone()),
        }
    }
}

/// One accepted connection's socket.
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// `$body` with `$s` bound to the socket, whichever kind it is.
macro_rules! either {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Stream::Tcp($s) => $body,
            Stream::Unix($s) => $body,
        }
    };
}

impl Stream {
    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        either!(self, s => s)
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self, s => s.read(buf))
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        either!(self, s => s.write(buf))
    }

    pub(super) fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        either!(self, s => s.write_vectored(bufs))
    }

    pub(super) fn shutdown(&self, how: std::net::Shutdown) {
        let _ = either!(self, s => s.shutdown(how));
    }
}
