//! The manager's addresses, for an event loop that must never block.
//!
//! A host name is looked up (getaddrinfo, which may take seconds when a
//! resolver is slow or down) on a thread of its own, at most once a second;
//! the loop takes the latest answer and asks for a fresh one when it is
//! older than that, dialling meanwhile with what it has. An IP address or a
//! Unix socket path needs no lookup and no thread.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use socket2::SockAddr;

use crate::transport::Endpoint;

/// How long one answer is used before a fresh lookup is asked for.
const FRESH_FOR: Duration = Duration::from_secs(1);

type Answer = Result<Arc<[SockAddr]>, String>;

#[derive(Debug)]
pub(super) struct Resolver {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Nothing to look up.
    Fixed(Answer),
    /// A host name, looked up by the thread behind `requests`.
    Lookup {
        latest: Arc<Mutex<Option<(Instant, Answer)>>>,
        requests: Sender<()>,
    },
}

impl Resolver {
    pub(super) fn new(endpoint: &Endpoint) -> Resolver {
        let fixed = match endpoint {
            Endpoint::Unix(path) => Some(
                SockAddr::unix(path)
                    .map(|a| Arc::from([a]))
                    .map_err(|err| err.to_string()),
            ),
            Endpoint::Tcp { host, port } | Endpoint::Tls { host, port } => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
                .map(|ip| {
                    Ok(Arc::from([SockAddr::from(std::net::SocketAddr::new(
                        ip, *port,
                    ))]))
                }),
        };
        if let Some(answer) = fixed {
            return Resolver {
                kind: Kind::Fixed(answer),
            };
        }
        let latest = Arc::new(Mutex::new(None));
        let (requests, incoming) = crossbeam_channel::bounded::<()>(1);
        let endpoint = endpoint.clone();
        let shared = latest.clone();
        let spawned = std::thread::Builder::new()
            .name("manager-lookup".into())
            // The default stack: getaddrinfo runs NSS modules whose stack
            // use is not ours to bound, and an overflow would end the agent.
            .spawn(move || {
                // Ends when the loop drops its end of the channel.
                while incoming.recv().is_ok() {
                    let answer = lookup(&endpoint);
                    if let Ok(mut latest) = shared.lock() {
                        *latest = Some((Instant::now(), answer));
                    }
                }
            });
        if let Err(err) = spawned {
            return Resolver {
                kind: Kind::Fixed(Err(format!("cannot start the name lookup thread: {err}"))),
            };
        }
        Resolver {
            kind: Kind::Lookup { latest, requests },
        }
    }

    /// The latest answer, or `None` while the first lookup is under way
    /// (ask again shortly). Never blocks.
    pub(super) fn addresses(&self, now: Instant) -> Option<Answer> {
        match &self.kind {
            Kind::Fixed(answer) => Some(answer.clone()),
            Kind::Lookup { latest, requests } => {
                let latest = latest.lock().ok()?.clone();
                if latest
                    .as_ref()
                    .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= FRESH_FOR)
                {
                    // One request at a time: a full channel means one is
                    // already waiting for the thread.
                    match requests.try_send(()) {
                        Ok(()) | Err(TrySendError::Full(())) => {}
                        Err(TrySendError::Disconnected(())) => {
                            return Some(Err("the name lookup thread has ended".into()));
                        }
                    }
                }
                latest.map(|(_, answer)| answer)
            }
        }
    }
}

fn lookup(endpoint: &Endpoint) -> Answer {
    match endpoint.socket_addrs() {
        Ok(found) if found.is_empty() => Err("the host name resolved to no address".into()),
        Ok(found) => Ok(found.into_iter().map(SockAddr::from).collect()),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(resolver: &Resolver) -> Answer {
        // A resolver that is configured but unreachable answers only after
        // its own timeouts and retries.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(answer) = resolver.addresses(Instant::now()) {
                return answer;
            }
            assert!(Instant::now() < deadline, "no answer within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_ip_address_or_a_path_needs_no_lookup() {
        for text in [
            "tcp://127.0.0.1:7000",
            "tls://[::1]:7000",
            "unix:///tmp/m.sock",
        ] {
            let endpoint: Endpoint = text.parse().unwrap();
            let resolver = Resolver::new(&endpoint);
            assert!(matches!(resolver.kind, Kind::Fixed(Ok(_))), "{text}");
            let answer = resolver.addresses(Instant::now()).unwrap().unwrap();
            assert_eq!(answer.len(), 1, "{text}");
        }
        let endpoint: Endpoint = "tcp://[::1]:7000".parse().unwrap();
        let answer = Resolver::new(&endpoint)
            .addresses(Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(answer[0].as_socket(), Some("[::1]:7000".parse().unwrap()));
    }

    #[test]
    fn a_host_name_is_looked_up_off_the_caller_and_every_address_is_kept() {
        let endpoint: Endpoint = "tcp://localhost:7000".parse().unwrap();
        let resolver = Resolver::new(&endpoint);
        assert!(matches!(resolver.kind, Kind::Lookup { .. }));
        let answer = wait_for(&resolver).unwrap();
        let expected = endpoint.socket_addrs().unwrap();
        assert_eq!(
            answer
                .iter()
                .map(|a| a.as_socket().unwrap())
                .collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_is_an_error_answer() {
        let endpoint: Endpoint = "tcp://no-such-host.invalid:7000".parse().unwrap();
        let resolver = Resolver::new(&endpoint);
        let answer = wait_for(&resolver);
        assert!(answer.is_err(), "{answer:?}");
    }
}
