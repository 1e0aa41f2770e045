//! The fuzz targets of `fuzz/` on the stable toolchain, through the same
//! functions the cargo-fuzz harnesses call (`ringworker::fuzzing`): for each
//! target, every input of its committed corpus (`fuzz/corpus/<target>/`),
//! then a bounded random run (a seeded mutation loop over that corpus, capped
//! in cases and in time) that fails on any panic.
//!
//! A failing random input is written to `target/fuzz-findings/<target>/`
//! and its path printed, so it can be committed to the corpus as a
//! regression once fixed.

#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus")).join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 24,
        "the {target} corpus is committed ({} inputs in {})",
        inputs.len(),
        dir.display()
    );
    inputs
}

/// Run `target` on `input`; on a panic, keep the input where it can be
/// committed from and fail with its path.
fn run_one(name: &str, target: &dyn Fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fuzz-findings")
            .join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("crash-{:016x}", fnv(input)));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked on the input saved as {} ({} bytes: {hex})",
            path.display(),
            input.len()
        );
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn replay(name: &str, target: &dyn Fn(&[u8])) {
    for input in corpus(name) {
        run_one(name, target, &input);
    }
}

/// How long each target's random run may take, and at most how many cases.
const RANDOM_TIME: Duration = Duration::from_secs(12);
const RANDOM_CASES: usize = 20_000;

/// A seeded mutation loop: corpus inputs with bytes flipped, inserted,
/// removed, spliced with another input or cut, and fresh random bytes.
/// The seed is fixed per target (printed), so a failure reproduces.
fn random_run(name: &str, target: &dyn Fn(&[u8])) {
    let seeds = corpus(name);
    let seed = fnv(name.as_bytes());
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut cases = 0;
    while cases < RANDOM_CASES && started.elapsed() < RANDOM_TIME {
        let input = mutate(&mut rng, &seeds);
        run_one(name, target, &input);
        cases += 1;
    }
    assert!(cases > 0);
    eprintln!(
        "{name}: {cases} random cases (seed {seed:#x}) in {:?}",
        started.elapsed()
    );
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_ratio(1, 8) {
        let len = rng.random_range(0..600);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut input = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=input.len());
        match rng.random_range(0..7) {
            0 if at < input.len() => input[at] ^= 1 << rng.random_range(0..8),
            1 if at < input.len() => input[at] = rng.random(),
            2 => input.insert(at, rng.random()),
            3 if at < input.len() => {
                let end = rng.random_range(at..=input.len().min(at + 16));
                input.drain(at..end);
            }
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                let to = rng.random_range(from..=other.len().min(from + 64));
                input.splice(at..at, other[from..to].iter().copied());
            }
            5 => input.truncate(at),
            _ if at < input.len() => {
                let interesting = [0u8, 1, 0x7f, 0x80, 0xff, 12, 16];
                input[at] = interesting[rng.random_range(0..interesting.len())];
            }
            _ => {}
        }
    }
    input
}

fn tls_peers() -> &'static ringworker::fuzzing::TlsPeers {
    static PEERS: OnceLock<ringworker::fuzzing::TlsPeers> = OnceLock::new();
    PEERS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        ringworker::fuzzing::TlsPeers::new(cert.der().to_vec(), key.serialize_der()).unwrap()
    })
}

fn tls(data: &[u8]) {
    ringworker::fuzzing::tls(tls_peers(), data);
}

macro_rules! fuzz_target_tests {
    ($($name:ident: $target:expr;)*) => {
        mod corpus_replay {
            $(
                #[test]
                fn $name() {
                    super::replay(stringify!($name), &$target);
                }
            )*
        }
        mod random_run {
            $(
                #[test]
                fn $name() {
                    super::random_run(stringify!($name), &$target);
                }
            )*
        }
    };
}

fuzz_target_tests! {
    decoder: ringworker::fuzzing::decoder;
    machine: ringworker::fuzzing::machine;
    session: ringworker::fuzzing::session;
    handshake: ringworker::fuzzing::handshake;
    manager: ringworker::fuzzing::manager;
    tls: super::tls;
}
