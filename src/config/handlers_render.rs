//! Writing [`HandlerDecl`]s back as `[handlers.NAME]` tables, for
//! `check-config`: every key (defaults included), the program as resolved.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{HandlerDecl, HandlerMode, ModeSettings};

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn duration_text(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

impl HandlerDecl {
    pub(super) fn write_toml(&self, out: &mut String) {
        let mode = match self.mode.mode() {
            HandlerMode::Exec => "exec",
            HandlerMode::Pool => "pool",
        };
        let key = if self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.name.clone()
        } else {
            toml_string(&self.name)
        };
        let _ = writeln!(out, "\n[handlers.{key}]");
        let _ = writeln!(out, "mode = \"{mode}\"");
        let command: Vec<String> = std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .map(|part| toml_string(&part))
            .collect();
        let _ = write!(out, "command = [{}]", command.join(", "));
        if Path::new(&self.program_written) != self.program {
            let _ = write!(
                out,
                "  # {} resolved against PATH",
                toml_string(&self.program_written)
            );
        }
        out.push('\n');
        if !self.env.is_empty() {
            let pairs: Vec<String> = self
                .env
                .iter()
                .map(|(name, value)| format!("{} = {}", toml_string(name), toml_string(value)))
                .collect();
            let _ = writeln!(out, "env = {{ {} }}", pairs.join(", "));
        }
        if !self.pass_env.is_empty() {
            let names: Vec<String> = self.pass_env.iter().map(|n| toml_string(n)).collect();
            let _ = writeln!(out, "pass_env = [{}]", names.join(", "));
        }
        if let Some(cwd) = &self.cwd {
            let _ = writeln!(out, "cwd = {}", toml_string(&cwd.display().to_string()));
        }
        let _ = writeln!(out, "timeout = \"{}\"", duration_text(self.timeout));
        let _ = writeln!(out, "kill_grace = \"{}\"", duration_text(self.kill_grace));
        match self.mode {
            ModeSettings::Exec { concurrency } => {
                let _ = writeln!(out, "concurrency = {concurrency}");
            }
            ModeSettings::Pool {
                processes,
                in_flight_per_process,
                recycle_after,
            } => {
                let _ = writeln!(out, "processes = {processes}");
                let _ = writeln!(out, "in_flight_per_process = {in_flight_per_process}");
                if let Some(after) = recycle_after {
                    let _ = writeln!(out, "recycle_after = {after}");
                }
            }
        }
        let limits = [
            ("address_space", self.rlimits.address_space),
            ("cpu_seconds", self.rlimits.cpu_seconds),
            ("open_files", self.rlimits.open_files),
        ];
        for (key, value) in limits {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        if let Some(user) = &self.user {
            let _ = writeln!(
                out,
                "user = {}  # uid {}, gid {}",
                toml_string(&user.name),
                user.uid,
                user.gid
            );
        }
        let _ = writeln!(out, "max_output = {}", self.max_output);
        let _ = writeln!(out, "stderr_cap = {}", self.stderr_cap);
    }
}
