//! Operator-defined handlers: the `[handlers.NAME]` tables of the config
//! file, checked and resolved into [`HandlerDecl`]s.
//!
//! A handler is declared in the file only; the manager names one in TASK
//! and never defines one. Resolving a table checks every rule once, at
//! load time: the name is one the protocol can carry and no built-in's,
//! the program exists (a bare name is looked up in the agent's `PATH` now,
//! so that a child's cleared environment cannot break it), the keys fit the
//! mode, the numbers are in range, the output cap fits the protocol's body
//! limit, no agent variable is passed to a child, and `user` is only given
//! to an agent that runs as root. Each refusal is a [`HandlerProblem`]
//! inside [`ConfigError::Handler`] with the handler's name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::settings::ByteSize;
use super::ConfigError;

/// The built-in handlers' names: a declaration may not take one.
pub const BUILTIN_NAMES: [&str; 5] = ["crc32c", "echo", "sha256", "sink", "sleep"];
/// Default `timeout` of a declared handler.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `timeout` (and `kill_grace`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default `kill_grace`: SIGTERM to the group, then SIGKILL this much later.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Default `concurrency` of an `exec` handler, and its bound.
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const MAX_CONCURRENCY: u32 = 1024;
/// Default `processes` of a `pool` handler, and its bound.
pub const DEFAULT_PROCESSES: u32 = 2;
pub const MAX_PROCESSES: u32 = 256;
/// Most `in_flight_per_process` of a `pool` handler (default 1).
pub const MAX_IN_FLIGHT_PER_PROCESS: u32 = 1024;
/// Default `stderr_cap` (the stderr excerpt of a FAILED), and its bound.
pub const DEFAULT_STDERR_CAP: u32 = 4096;
pub const MAX_STDERR_CAP: u32 = 64 * 1024;
/// Variables a child is never given, from `pass_env` or `env`: the agent's
/// own settings (`RINGWORKER_*`, the token file among them) and systemd's
/// credential directory, where the token may live.
pub const AGENT_VARIABLE_PREFIX: &str = "RINGWORKER_";
pub const CREDENTIALS_VARIABLE: &str = "CREDENTIALS_DIRECTORY";

/// `mode`: how a handler's program is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerMode {
    /// One process per task: payload on stdin, result on stdout.
    Exec,
    /// Long-lived processes speaking the handler protocol on fd 3.
    Pool,
}

/// One `[handlers.NAME]` table as the file writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerTable {
    pub mode: Option<HandlerMode>,
    /// The program and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Variables set in the child's (otherwise empty) environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables copied from the agent's environment when set there.
    #[serde(default, alias = "pass-env")]
    pub pass_env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<String>,
    #[serde(alias = "kill-grace")]
    pub kill_grace: Option<String>,
    pub concurrency: Option<u32>,
    pub processes: Option<u32>,
    #[serde(alias = "in-flight-per-process")]
    pub in_flight_per_process: Option<u32>,
    #[serde(alias = "recycle-after")]
    pub recycle_after: Option<u64>,
    #[serde(alias = "address-space")]
    pub address_space: Option<ByteSize>,
    #[serde(alias = "cpu-seconds")]
    pub cpu_seconds: Option<u64>,
    #[serde(alias = "open-files")]
    pub open_files: Option<u64>,
    pub user: Option<String>,
    #[serde(alias = "max-output")]
    pub max_output: Option<ByteSize>,
    #[serde(alias = "stderr-cap")]
    pub stderr_cap: Option<ByteSize>,
}

/// What runs the handler's program, with the settings of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSettings {
    Exec {
        /// Children at once; more tasks wait.
        concurrency: u32,
    },
    Pool {
        processes: u32,
        in_flight_per_process: u32,
        /// Replace a process after this many tasks.
        recycle_after: Option<u64>,
    },
}

impl ModeSettings {
    pub fn mode(self) -> HandlerMode {
        match self {
            ModeSettings::Exec { .. } => HandlerMode::Exec,
            ModeSettings::Pool { .. } => HandlerMode::Pool,
        }
    }
}

/// Optional resource limits of a child (`setrlimit`, soft = hard).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_CPU`, seconds.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
}

/// The user a child runs as (`user`, for an agent started as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// As written in the file.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A checked handler declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerDecl {
    pub name: String,
    pub mode: ModeSettings,
    /// The program, resolved to a path when the config was loaded.
    pub program: PathBuf,
    /// `command[0]` as written.
    pub program_written: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pass_env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub rlimits: Rlimits,
    pub user: Option<RunAs>,
    /// Largest result (stdout in `exec` mode); at most `max_body`.
    pub max_output: u32,
    /// Most stderr bytes kept for a FAILED message.
    pub stderr_cap: u32,
}

/// Every declared handler, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerSet {
    pub handlers: Vec<HandlerDecl>,
}

/// Why a `[handlers.NAME]` table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerProblem {
    #[error(
        "the name must be 1..=64 printable ASCII characters without spaces (a TASK carries it)"
    )]
    BadName,
    #[error(
        "the name is a built-in handler's (crc32c, echo, sha256, sink, sleep); choose another"
    )]
    BuiltinName,
    #[error(
        "`mode` is missing: \"exec\" (one process per task) or \"pool\" (long-lived processes)"
    )]
    MissingMode,
    #[error(
        "`command` is empty: give the program and its arguments, e.g. [\"tr\", \"a-z\", \"A-Z\"]"
    )]
    EmptyCommand,
    #[error("program {program:?} not found in PATH ({path})")]
    ProgramNotFound { program: String, path: String },
    #[error("program {0} does not exist or is not an executable file")]
    NotExecutable(PathBuf),
    #[error("`{key}` is a key of mode \"{wanted}\", not of this handler's")]
    KeyNotForMode {
        key: &'static str,
        wanted: &'static str,
    },
    #[error("`{key}` {value} must be between {min} and {max}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("`max_output` {max_output} is more than the body limit max_body ({max_body})")]
    MaxOutputOverBody { max_output: u64, max_body: u32 },
    #[error("`{key}` {text:?} is not a duration with a unit (examples: 250ms, 5s, 2m, 1h, 1m30s)")]
    Duration { key: &'static str, text: String },
    #[error("`{key}` {value:?} must be between 1ms and 24h")]
    DurationRange { key: &'static str, value: String },
    #[error("variable {0:?} is the agent's own (RINGWORKER_*, CREDENTIALS_DIRECTORY): never given to a child")]
    AgentVariable(String),
    #[error("{0:?} is not a variable name (non-empty, without '=' or NUL)")]
    BadVariableName(String),
    #[error("`cwd` {0} must be an absolute path")]
    RelativeCwd(PathBuf),
    #[error("`user` {0:?} is only for an agent started as root (this one is not)")]
    UserWithoutRoot(String),
    #[error("`user` {0:?} is not in /etc/passwd (give a name, UID or UID:GID)")]
    UnknownUser(String),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

/// What a resolution reads from the agent's surroundings, given rather
/// than looked up so that tests can set it.
#[derive(Debug, Clone)]
pub struct Surroundings {
    /// The agent's `PATH`.
    pub path: Option<OsString>,
    /// The agent's effective user id (`None`: unknown, treated as not root).
    pub euid: Option<u32>,
    /// The user database (`/etc/passwd`).
    pub passwd: PathBuf,
}

impl Surroundings {
    /// This process's.
    pub fn current() -> Self {
        Surroundings {
            path: std::env::var_os("PATH"),
            euid: super::memory::proc_value("/proc/self/status", "Uid")
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok()),
            passwd: PathBuf::from("/etc/passwd"),
        }
    }
}

impl HandlerSet {
    /// Resolve the file's tables against this process's surroundings.
    pub fn resolve(
        tables: &BTreeMap<String, HandlerTable>,
        max_body: u32,
    ) -> Result<HandlerSet, ConfigError> {
        Self::resolve_in(tables, max_body, &Surroundings::current())
    }

    /// Resolve the file's tables; the first refusal is the error.
    pub fn resolve_in(
        tables: &BTreeMap<String, HandlerTable>,
        max_body: u32,
        around: &Surroundings,
    ) -> Result<HandlerSet, ConfigError> {
        let handlers = tables
            .iter()
            .map(|(name, table)| {
                resolve_one(name, table, max_body, around).map_err(|problem| ConfigError::Handler {
                    name: name.clone(),
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HandlerSet { handlers })
    }

    /// The declaration named `name`.
    pub fn get(&self, name: &str) -> Option<&HandlerDecl> {
        self.handlers.iter().find(|decl| decl.name == name)
    }

    /// The names, sorted, for HELLO's `handlers` list.
    pub fn names(&self) -> Vec<String> {
        self.handlers.iter().map(|decl| decl.name.clone()).collect()
    }

    /// The declarations as `[handlers.NAME]` tables that load again to the
    /// same set, each key written out (defaults included) and the program
    /// as resolved, with what the file wrote in a comment.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for decl in &self.handlers {
            decl.write_toml(&mut out);
        }
        out
    }
}

/// A duration written with units: `250ms`, `5s`, `2m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match rest[..unit_len].trim() {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn duration_key(
    key: &'static str,
    text: Option<&String>,
    default: Duration,
) -> Result<Duration, HandlerProblem> {
    let Some(text) = text else {
        return Ok(default);
    };
    let value = parse_duration(text).ok_or_else(|| HandlerProblem::Duration {
        key,
        text: text.clone(),
    })?;
    if value < Duration::from_millis(1) || value > MAX_TIMEOUT {
        return Err(HandlerProblem::DurationRange {
            key,
            value: text.clone(),
        });
    }
    Ok(value)
}

fn in_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), HandlerProblem> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(HandlerProblem::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

/// Whether `name` is a handler name a TASK can carry (PROTOCOL.md:
/// 1..=64 bytes of printable ASCII); a space is refused as well, since
/// it cannot be told apart in logs and lists.
pub fn valid_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::protocol::frame::MAX_HANDLER_NAME
        && name.bytes().all(|b| b.is_ascii_graphic())
}

fn check_variable(name: &str) -> Result<(), HandlerProblem> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(HandlerProblem::BadVariableName(name.to_owned()));
    }
    if name.starts_with(AGENT_VARIABLE_PREFIX) || name == CREDENTIALS_VARIABLE {
        return Err(HandlerProblem::AgentVariable(name.to_owned()));
    }
    Ok(())
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `command[0]` as a path: a name with a `/` as it is (made absolute
/// against the agent's directory), a bare name looked up in `PATH`.
fn resolve_program(program: &str, path: Option<&OsString>) -> Result<PathBuf, HandlerProblem> {
    if program.contains('/') {
        let written = PathBuf::from(program);
        let absolute = if written.is_absolute() {
            written
        } else {
            std::env::current_dir()
                .map(|dir| dir.join(&written))
                .unwrap_or(written)
        };
        return if is_executable_file(&absolute) {
            Ok(absolute)
        } else {
            Err(HandlerProblem::NotExecutable(absolute))
        };
    }
    let found = path.and_then(|path| {
        std::env::split_paths(path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable_file(candidate))
    });
    found.ok_or_else(|| HandlerProblem::ProgramNotFound {
        program: program.to_owned(),
        path: path.map_or_else(|| "unset".to_owned(), |p| p.to_string_lossy().into_owned()),
    })
}

/// `user`: a name from the user database, a UID (its group from the
/// database, else the same number) or `UID:GID`.
fn resolve_user(user: &str, passwd: &Path) -> Result<RunAs, HandlerProblem> {
    let unknown = || HandlerProblem::UnknownUser(user.to_owned());
    let entries = std::fs::read_to_string(passwd).unwrap_or_default();
    let lookup = |wanted: &dyn Fn(&str, u32) -> bool| {
        entries.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid: u32 = fields.nth(1)?.parse().ok()?;
            let gid: u32 = fields.next()?.parse().ok()?;
            wanted(name, uid).then_some((uid, gid))
        })
    };
    let (uid, gid) = if let Some((uid, gid)) = user.split_once(':') {
        (
            uid.parse().map_err(|_| unknown())?,
            gid.parse().map_err(|_| unknown())?,
        )
    } else if let Ok(uid) = user.parse::<u32>() {
        lookup(&|_, id| id == uid).unwrap_or((uid, uid))
    } else {
        lookup(&|name, _| name == user).ok_or_else(unknown)?
    };
    Ok(RunAs {
        name: user.to_owned(),
        uid,
        gid,
    })
}

fn resolve_one(
    name: &str,
    table: &HandlerTable,
    max_body: u32,
    around: &Surroundings,
) -> Result<HandlerDecl, HandlerProblem> {
    if !valid_handler_name(name) {
        return Err(HandlerProblem::BadName);
    }
    if BUILTIN_NAMES.contains(&name) {
        return Err(HandlerProblem::BuiltinName);
    }
    let mode = table.mode.ok_or(HandlerProblem::MissingMode)?;
    let (program_written, args) = table
        .command
        .split_first()
        .ok_or(HandlerProblem::EmptyCommand)?;
    if program_written.is_empty() {
        return Err(HandlerProblem::EmptyCommand);
    }
    for part in &table.command {
        if part.contains('\0') {
            return Err(HandlerProblem::Nul(part.clone()));
        }
    }
    let program = resolve_program(program_written, around.path.as_ref())?;
    let mode = match mode {
        HandlerMode::Exec => {
            let pool_keys = [
                ("processes", table.processes.is_some()),
                (
                    "in_flight_per_process",
                    table.in_flight_per_process.is_some(),
                ),
                ("recycle_after", table.recycle_after.is_some()),
            ];
            if let Some((key, _)) = pool_keys.iter().find(|(_, set)| *set) {
                return Err(HandlerProblem::KeyNotForMode {
                    key,
                    wanted: "pool",
                });
            }
            let concurrency = table.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
            in_range("concurrency", concurrency.into(), 1, MAX_CONCURRENCY.into())?;
            ModeSettings::Exec { concurrency }
        }
        HandlerMode::Pool => {
            if table.concurrency.is_some() {
                return Err(HandlerProblem::KeyNotForMode {
                    key: "concurrency",
                    wanted: "exec",
                });
            }
            let processes = table.processes.unwrap_or(DEFAULT_PROCESSES);
            in_range("processes", processes.into(), 1, MAX_PROCESSES.into())?;
            let in_flight_per_process = table.in_flight_per_process.unwrap_or(1);
            in_range(
                "in_flight_per_process",
                in_flight_per_process.into(),
                1,
                MAX_IN_FLIGHT_PER_PROCESS.into(),
            )?;
            if let Some(after) = table.recycle_after {
                in_range("recycle_after", after, 1, u64::MAX)?;
            }
            ModeSettings::Pool {
                processes,
                in_flight_per_process,
                recycle_after: table.recycle_after,
            }
        }
    };
    for (key, value) in &table.env {
        check_variable(key)?;
        if value.contains('\0') {
            return Err(HandlerProblem::Nul(value.clone()));
        }
    }
    for key in &table.pass_env {
        check_variable(key)?;
    }
    if let Some(cwd) = &table.cwd {
        if !cwd.is_absolute() {
            return Err(HandlerProblem::RelativeCwd(cwd.clone()));
        }
    }
    let timeout = duration_key("timeout", table.timeout.as_ref(), DEFAULT_TIMEOUT)?;
    let kill_grace = duration_key("kill_grace", table.kill_grace.as_ref(), DEFAULT_KILL_GRACE)?;
    let rlimits = Rlimits {
        address_space: table.address_space.map(|b| b.0),
        cpu_seconds: table.cpu_seconds,
        open_files: table.open_files,
    };
    if let Some(bytes) = rlimits.address_space {
        in_range("address_space", bytes, 1 << 20, u64::MAX)?;
    }
    if let Some(seconds) = rlimits.cpu_seconds {
        in_range("cpu_seconds", seconds, 1, u64::MAX)?;
    }
    if let Some(files) = rlimits.open_files {
        // The child needs its three standard descriptors and fd 3.
        in_range("open_files", files, 8, u64::from(u32::MAX))?;
    }
    let user = match &table.user {
        None => None,
        Some(user) if around.euid != Some(0) => {
            return Err(HandlerProblem::UserWithoutRoot(user.clone()))
        }
        Some(user) => Some(resolve_user(user, &around.passwd)?),
    };
    let max_output = table.max_output.map_or(u64::from(max_body), |b| b.0);
    if max_output > u64::from(max_body) {
        return Err(HandlerProblem::MaxOutputOverBody {
            max_output,
            max_body,
        });
    }
    let stderr_cap = table
        .stderr_cap
        .map_or(u64::from(DEFAULT_STDERR_CAP), |b| b.0);
    in_range("stderr_cap", stderr_cap, 0, MAX_STDERR_CAP.into())?;
    Ok(HandlerDecl {
        name: name.to_owned(),
        mode,
        program,
        program_written: program_written.clone(),
        args: args.to_vec(),
        env: table.env.clone(),
        pass_env: table.pass_env.clone(),
        cwd: table.cwd.clone(),
        timeout,
        kill_grace,
        rlimits,
        user,
        // Both fit: bounded by max_body (u32) and MAX_STDERR_CAP above.
        max_output: u32::try_from(max_output).unwrap_or(max_body),
        stderr_cap: u32::try_from(stderr_cap).unwrap_or(MAX_STDERR_CAP),
    })
}

#[path = "handlers_render.rs"]
mod render;

#[cfg(test)]
#[path = "handlers_tests.rs"]
mod tests;
