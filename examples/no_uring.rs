//! Run a command with io_uring refused, the way Docker's default seccomp
//! profile or `kernel.io_uring_disabled` refuse it: `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` fail with EPERM.
//!
//! ```sh
//! cargo run --example no_uring -- target/debug/ringworker run --manager tcp://127.0.0.1:7000
//! ```
//!
//! The tests use it to check that `--runtime auto` falls back to the blocking
//! runtime and that `--runtime uring` fails with the reason.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: no_uring PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let arch: TargetArch = match std::env::consts::ARCH.try_into() {
        Ok(arch) => arch,
        Err(err) => {
            eprintln!("no_uring: unsupported architecture: {err:?}");
            return ExitCode::from(2);
        }
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    let program_filter: Result<BpfProgram, String> = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("{e:?}"))
    .and_then(|filter| {
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| format!("{e:?}"))
    });
    let bpf = match program_filter {
        Ok(bpf) => bpf,
        Err(err) => {
            eprintln!("no_uring: cannot build the filter: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = apply_filter(&bpf) {
        eprintln!("no_uring: cannot apply the filter: {err}");
        return ExitCode::from(2);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("no_uring: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}
