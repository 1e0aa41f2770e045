//! Command-line parsing shared by the binaries: a usage error is one line
//! (AGENT.md), with clap's tips kept.

/// Parse a binary's command line with clap; on a usage error, print one line
/// on stderr and exit with status 2 (AGENT.md: a fatal error is one line).
///
/// Help and version requests (and a bare command that answers with its
/// help) keep clap's own output and exit status. Any other error becomes
/// `PROGRAM: MESSAGE; TIP; see 'PROGRAM [SUBCOMMAND] --help'`.
pub fn parse_args_or_exit<P: clap::Parser>(program: &str) -> P {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match P::try_parse_from(&args) {
        Ok(parsed) => parsed,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                err.exit();
            }
            // The subcommand the arguments name, for where to find its help.
            let command = P::command();
            let subcommand = args
                .iter()
                .skip(1)
                .filter_map(|arg| arg.to_str())
                .find(|arg| !arg.starts_with('-'))
                .and_then(|name| command.find_subcommand(name))
                .map(|sub| sub.get_name().to_owned());
            let help = match subcommand {
                Some(name) => format!("{program} {name} --help"),
                None => format!("{program} --help"),
            };
            crate::tell!("{}", usage_error_line(program, &err, &help));
            std::process::exit(2);
        }
    }
}

/// A clap usage error as one line: `PROGRAM: MESSAGE; TIP; see 'HELP'`.
/// clap's `error: ` prefix, usage block and "For more information" line go;
/// its tips and continuation lines are folded in.
pub fn usage_error_line(program: &str, err: &clap::Error, help: &str) -> String {
    let rendered = err.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    // After a line ending in ':' ("the following required arguments were not
    // provided:"), the lines up to the next blank one are its list.
    let mut listing = false;
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") {
            break;
        }
        if line.is_empty() || line.starts_with("For more information") {
            listing = false;
            continue;
        }
        let line = line
            .strip_prefix("error:")
            .or_else(|| line.strip_prefix("tip:"))
            .map_or(line, str::trim_start);
        // "[possible values: auto, uring, blocking]"
        let line = line
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(line);
        match parts.last_mut() {
            Some(last) if listing => {
                last.push_str(if last.ends_with(':') { " " } else { ", " });
                last.push_str(line);
            }
            _ => {
                listing = line.ends_with(':');
                parts.push(line.to_owned());
            }
        }
    }
    parts.push(format!("see '{help}'"));
    format!("{program}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_one_line_with_its_tips_and_lists() {
        let command = || {
            clap::Command::new("prog")
                .arg(clap::Arg::new("alpha").long("alpha").required(true))
                .arg(clap::Arg::new("beta").long("beta").required(true))
                .arg(clap::Arg::new("sessions").long("sessions"))
        };
        let err = command()
            .try_get_matches_from(["prog", "--sesions", "3"])
            .unwrap_err();
        let line = usage_error_line("prog", &err, "prog --help");
        assert_eq!(
            line,
            "prog: unexpected argument '--sesions' found; a similar argument exists: \
             '--sessions'; see 'prog --help'"
        );
        let err = command()
            .try_get_matches_from(["prog", "--sessions", "3"])
            .unwrap_err();
        let line = usage_error_line("prog", &err, "prog --help");
        assert_eq!(
            line,
            "prog: the following required arguments were not provided: --alpha <alpha>, \
             --beta <beta>; see 'prog --help'"
        );
    }
}
