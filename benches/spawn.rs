//! Starting a declared handler's child: `posix_spawn` (a spec with no
//! limit and no user) against the fork path (the same spec with a
//! resource limit that changes nothing), each spawning `/bin/true`. The
//! time is what `Child::spawn` takes on the calling thread (an event
//! loop's, in the agent), until the child has exec'd; running the child to
//! its end and reaping it are not counted.
//!
//! Fork copies the parent's page tables, so its cost grows with the
//! parent's memory: each pair runs once as is and once with 256 MiB of
//! touched heap, closer to a loaded agent.

use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ringworker::exec::{Child, SpawnSpec};

/// How long `Child::spawn` holds the calling thread (both paths return
/// once the child has exec'd); the child is then run to its end and
/// reaped, untimed.
fn spawn_time(spec: &SpawnSpec) -> Duration {
    let start = Instant::now();
    let mut child = Child::spawn(spec).expect("spawn");
    let took = start.elapsed();
    // Blocking reads: the child's exit closes its end.
    child.set_blocking().expect("blocking");
    drop(child.stdin.take());
    let stdout = child.stdout.take().expect("stdout");
    let mut out = Vec::new();
    File::from(stdout).read_to_end(&mut out).expect("read");
    black_box(child.reap().expect("reap"));
    took
}

fn spawn(c: &mut Criterion) {
    let posix = SpawnSpec {
        program: "/bin/true".into(),
        ..SpawnSpec::default()
    };
    assert!(posix.uses_posix_spawn(), "this glibc lacks closefrom");
    let mut forked = posix.clone();
    forked.rlimits.cpu_seconds = Some(libc::RLIM_INFINITY);
    assert!(!forked.uses_posix_spawn());
    let mut group = c.benchmark_group("spawn");
    group.sample_size(20);
    let mut heap: Vec<u8> = Vec::new();
    for heap_mib in [0usize, 256] {
        // Touched, so that its pages are mapped and fork has to copy their
        // page-table entries.
        heap = vec![1u8; heap_mib << 20];
        for (path, spec) in [("posix_spawn", &posix), ("fork", &forked)] {
            let id = BenchmarkId::new(path, format!("{heap_mib}MiB"));
            group.bench_with_input(id, spec, |b, spec| {
                b.iter_custom(|iters| (0..iters).map(|_| spawn_time(spec)).sum())
            });
        }
    }
    black_box(&heap);
    group.finish();
}

criterion_group!(benches, spawn);
criterion_main!(benches);
