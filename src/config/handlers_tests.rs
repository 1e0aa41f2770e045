//! The `[handlers.NAME]` rules, one test per rule.

use super::*;
use crate::config::{parse_file, Config, FileError, Settings};

const BODY: u32 = 1 << 20;

fn around() -> Surroundings {
    Surroundings {
        path: Some("/nonexistent-dir:/usr/bin:/bin".into()),
        euid: Some(1000),
        passwd: PathBuf::from("/etc/passwd"),
    }
}

/// The handlers of a file's text, resolved.
fn resolve_text(text: &str, around: &Surroundings) -> Result<HandlerSet, ConfigError> {
    let settings = parse_file(text).expect("the file parses");
    HandlerSet::resolve_in(&settings.handlers, BODY, around)
}

/// The problem a one-handler file's text is refused with.
fn problem(text: &str) -> HandlerProblem {
    problem_in(text, &around())
}

fn problem_in(text: &str, around: &Surroundings) -> HandlerProblem {
    match resolve_text(text, around) {
        Err(ConfigError::Handler { problem, .. }) => problem,
        other => panic!("not a handler problem: {other:?}"),
    }
}

const ISSUE_EXAMPLE: &str = r#"
manager = "tcp://127.0.0.1:7000"

[handlers.upper]
mode = "exec"
command = ["tr", "a-z", "A-Z"]
timeout = "5s"

[handlers.resize]
mode = "pool"
command = ["cat", "-u"]
processes = 4
timeout = "30s"
"#;

#[test]
fn the_issue_example_resolves_with_defaults_and_paths() {
    let set = resolve_text(ISSUE_EXAMPLE, &around()).unwrap();
    assert_eq!(set.names(), ["resize", "upper"]);
    let upper = set.get("upper").unwrap();
    assert_eq!(upper.mode, ModeSettings::Exec { concurrency: 4 });
    assert_eq!(upper.program, PathBuf::from("/usr/bin/tr"));
    assert_eq!(upper.program_written, "tr");
    assert_eq!(upper.args, ["a-z", "A-Z"]);
    assert_eq!(upper.timeout, Duration::from_secs(5));
    assert_eq!(upper.kill_grace, DEFAULT_KILL_GRACE);
    assert_eq!(upper.max_output, BODY);
    assert_eq!(upper.stderr_cap, DEFAULT_STDERR_CAP);
    assert_eq!(upper.user, None);
    assert_eq!(upper.rlimits, Rlimits::default());
    let resize = set.get("resize").unwrap();
    assert_eq!(
        resize.mode,
        ModeSettings::Pool {
            processes: 4,
            in_flight_per_process: 1,
            recycle_after: None
        }
    );
    assert_eq!(resize.timeout, Duration::from_secs(30));
}

#[test]
fn every_key_is_read_and_the_rendering_loads_again() {
    let text = r#"
[handlers."my.tool"]
mode = "pool"
command = ["/bin/cat", "-u", "a \"quoted\" arg"]
env = { LANG = "C.UTF-8", MODE = "x y" }
pass_env = ["HOME"]
cwd = "/tmp"
timeout = "1m30s"
kill_grace = "250ms"
processes = 3
in_flight_per_process = 8
recycle_after = 1000
address_space = "512MiB"
cpu_seconds = 60
open_files = 256
max_output = "64KiB"
stderr_cap = 100
"#;
    let set = resolve_text(text, &around()).unwrap();
    let decl = set.get("my.tool").unwrap();
    assert_eq!(decl.timeout, Duration::from_secs(90));
    assert_eq!(decl.kill_grace, Duration::from_millis(250));
    assert_eq!(decl.env.get("MODE").map(String::as_str), Some("x y"));
    assert_eq!(decl.pass_env, ["HOME"]);
    assert_eq!(decl.cwd.as_deref(), Some(Path::new("/tmp")));
    assert_eq!(
        decl.rlimits,
        Rlimits {
            address_space: Some(512 << 20),
            cpu_seconds: Some(60),
            open_files: Some(256)
        }
    );
    assert_eq!(decl.max_output, 64 << 10);
    assert_eq!(decl.stderr_cap, 100);
    let rendered = set.to_toml();
    assert!(rendered.contains("[handlers.\"my.tool\"]"), "{rendered}");
    let again = resolve_text(&rendered, &around()).unwrap();
    assert_eq!(again, set, "{rendered}");
    // A resolved bare name is shown with what the file wrote.
    let rendered = resolve_text(ISSUE_EXAMPLE, &around()).unwrap().to_toml();
    assert!(
        rendered.contains(
            "command = [\"/usr/bin/tr\", \"a-z\", \"A-Z\"]  # \"tr\" resolved against PATH"
        ),
        "{rendered}"
    );
    // The same declarations but for what the file wrote as the program.
    let mut original = resolve_text(ISSUE_EXAMPLE, &around()).unwrap();
    for decl in &mut original.handlers {
        decl.program_written = decl.program.display().to_string();
    }
    assert_eq!(resolve_text(&rendered, &around()).unwrap(), original);
}

#[test]
fn names_are_checked_as_the_protocol_checks_them() {
    for bad in [
        "\"\"",
        "\"a b\"",
        "\"é\"",
        &format!("\"{}\"", "x".repeat(65)),
    ] {
        let text = format!("[handlers.{bad}]\nmode = \"exec\"\ncommand = [\"cat\"]\n");
        assert_eq!(problem(&text), HandlerProblem::BadName, "{bad}");
    }
    let text = format!(
        "[handlers.{}]\nmode = \"exec\"\ncommand = [\"cat\"]\n",
        "x".repeat(64)
    );
    assert!(resolve_text(&text, &around()).is_ok());
}

#[test]
fn a_builtin_name_is_refused() {
    for name in BUILTIN_NAMES {
        let text = format!("[handlers.{name}]\nmode = \"exec\"\ncommand = [\"cat\"]\n");
        let err = resolve_text(&text, &around()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Handler { name: n, problem: HandlerProblem::BuiltinName } if n == name),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!("handlers.{name}: ")),
            "{err}"
        );
    }
    // The list is the registry's.
    let mut builtins = crate::handlers::HandlerRegistry::with_builtins().names();
    builtins.sort();
    assert_eq!(builtins, BUILTIN_NAMES);
}

#[test]
fn mode_and_command_are_required() {
    assert_eq!(
        problem("[handlers.a]\ncommand = [\"cat\"]\n"),
        HandlerProblem::MissingMode
    );
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\n"),
        HandlerProblem::EmptyCommand
    );
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"\"]\n"),
        HandlerProblem::EmptyCommand
    );
    let err = parse_file("[handlers.a]\nmode = \"fork\"\ncommand = [\"cat\"]\n").unwrap_err();
    assert!(
        matches!(err, FileError::Invalid { line: Some(2), .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_keys_in_a_table_are_named_with_their_line() {
    let err = parse_file("[handlers.a]\nmode = \"exec\"\ncomand = [\"cat\"]\n").unwrap_err();
    assert!(
        matches!(err, FileError::Invalid { line: Some(3), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("comand"), "{err}");
    // A misspelt table is an unknown key with the nearest table suggested.
    let err = parse_file("[handler.a]\nmode = \"exec\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1: unknown key `handler`; did you mean `handlers`?"
    );
}

#[test]
fn a_bare_name_is_resolved_against_path_and_a_missing_program_is_refused() {
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"no-such-program-here\"]\n"),
        HandlerProblem::ProgramNotFound {
            program: "no-such-program-here".into(),
            path: "/nonexistent-dir:/usr/bin:/bin".into()
        }
    );
    let no_path = Surroundings {
        path: None,
        ..around()
    };
    assert!(matches!(
        problem_in("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\n", &no_path),
        HandlerProblem::ProgramNotFound { path, .. } if path == "unset"
    ));
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"/no/such/prog\"]\n"),
        HandlerProblem::NotExecutable("/no/such/prog".into())
    );
    // A file that is not executable, and a directory.
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"/etc/passwd\"]\n"),
        HandlerProblem::NotExecutable("/etc/passwd".into())
    );
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"/usr/bin\"]\n"),
        HandlerProblem::NotExecutable("/usr/bin".into())
    );
    // A relative path with a slash is made absolute against the agent's directory.
    let set = resolve_text(
        "[handlers.a]\nmode = \"exec\"\ncommand = [\"../../usr/bin/env\"]\n",
        &Surroundings {
            path: None,
            ..around()
        },
    );
    match set {
        Ok(set) => assert!(set.handlers[0].program.is_absolute()),
        Err(ConfigError::Handler {
            problem: HandlerProblem::NotExecutable(path),
            ..
        }) => {
            assert!(path.is_absolute(), "{path:?}")
        }
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn keys_of_the_other_mode_are_refused() {
    for key in [
        "processes = 2",
        "in_flight_per_process = 2",
        "recycle_after = 5",
    ] {
        let text = format!("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\n{key}\n");
        assert!(
            matches!(
                problem(&text),
                HandlerProblem::KeyNotForMode { wanted: "pool", .. }
            ),
            "{key}"
        );
    }
    assert_eq!(
        problem("[handlers.a]\nmode = \"pool\"\ncommand = [\"cat\"]\nconcurrency = 2\n"),
        HandlerProblem::KeyNotForMode {
            key: "concurrency",
            wanted: "exec"
        }
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    let cases = [
        ("exec", "concurrency = 0", "concurrency"),
        ("exec", "concurrency = 1025", "concurrency"),
        ("pool", "processes = 0", "processes"),
        ("pool", "processes = 257", "processes"),
        ("pool", "in_flight_per_process = 0", "in_flight_per_process"),
        ("pool", "recycle_after = 0", "recycle_after"),
        ("exec", "address_space = 1000", "address_space"),
        ("exec", "cpu_seconds = 0", "cpu_seconds"),
        ("exec", "open_files = 3", "open_files"),
        ("exec", "stderr_cap = \"65537\"", "stderr_cap"),
    ];
    for (mode, line, wanted) in cases {
        let text = format!("[handlers.a]\nmode = \"{mode}\"\ncommand = [\"cat\"]\n{line}\n");
        assert!(
            matches!(problem(&text), HandlerProblem::OutOfRange { key, .. } if key == wanted),
            "{line}"
        );
    }
    let ok =
        "[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nconcurrency = 1024\nstderr_cap = 0\n";
    assert!(resolve_text(ok, &around()).is_ok());
}

#[test]
fn max_output_is_bounded_by_max_body() {
    let text = "[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nmax_output = \"2MiB\"\n";
    assert_eq!(
        problem(text),
        HandlerProblem::MaxOutputOverBody {
            max_output: 2 << 20,
            max_body: BODY
        }
    );
    // Through Config::merge, against the file's own max_body.
    let file = parse_file(&format!(
        "manager = \"tcp://127.0.0.1:1\"\nmax_body = \"4MiB\"\n{text}"
    ))
    .unwrap();
    assert!(Config::merge(&Settings::default(), file).is_ok());
    let file = parse_file(&format!(
        "manager = \"tcp://127.0.0.1:1\"\nmax_body = \"1MiB\"\n{text}"
    ))
    .unwrap();
    let err = Config::merge(&Settings::default(), file).unwrap_err();
    assert!(matches!(err, ConfigError::Handler { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "handlers.a: `max_output` 2097152 is more than the body limit max_body (1048576)"
    );
}

#[test]
fn durations_need_units_and_a_range() {
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration(" 10 s "), Some(Duration::from_secs(10)));
    for bad in [
        "",
        "5",
        "s",
        "5 sec",
        "-1s",
        "1.5s",
        "99999999999999999999s",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\ntimeout = \"5\"\n"),
        HandlerProblem::Duration {
            key: "timeout",
            text: "5".into()
        }
    );
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nkill_grace = \"0s\"\n"),
        HandlerProblem::DurationRange {
            key: "kill_grace",
            value: "0s".into()
        }
    );
    assert!(matches!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\ntimeout = \"25h\"\n"),
        HandlerProblem::DurationRange { key: "timeout", .. }
    ));
    // A number without quotes is a type error of the file, with its line.
    let err = parse_file("[handlers.a]\nmode = \"exec\"\ntimeout = 5\n").unwrap_err();
    assert!(
        matches!(err, FileError::Invalid { line: Some(3), .. }),
        "{err:?}"
    );
}

#[test]
fn agent_variables_are_never_passed() {
    for (key, name) in [
        ("pass_env", "RINGWORKER_TOKEN_FILE"),
        ("pass_env", "RINGWORKER_MANAGER"),
        ("pass_env", "CREDENTIALS_DIRECTORY"),
    ] {
        let text =
            format!("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\n{key} = [\"{name}\"]\n");
        assert_eq!(problem(&text), HandlerProblem::AgentVariable(name.into()));
    }
    let text = "[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nenv = { RINGWORKER_HANDLER_FD = \"4\" }\n";
    assert_eq!(
        problem(text),
        HandlerProblem::AgentVariable("RINGWORKER_HANDLER_FD".into())
    );
    for bad in ["", "A=B"] {
        let text =
            format!("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\npass_env = [\"{bad}\"]\n");
        assert_eq!(problem(&text), HandlerProblem::BadVariableName(bad.into()));
    }
    let text =
        "[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nenv = { \"A\" = \"x\\u0000y\" }\n";
    assert_eq!(problem(text), HandlerProblem::Nul("x\0y".into()));
}

#[test]
fn cwd_must_be_absolute() {
    assert_eq!(
        problem("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\ncwd = \"work\"\n"),
        HandlerProblem::RelativeCwd("work".into())
    );
}

#[test]
fn user_is_for_root_only_and_must_exist() {
    let text = "[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nuser = \"nobody\"\n";
    assert_eq!(
        problem(text),
        HandlerProblem::UserWithoutRoot("nobody".into())
    );
    let unknown_euid = Surroundings {
        euid: None,
        ..around()
    };
    assert_eq!(
        problem_in(text, &unknown_euid),
        HandlerProblem::UserWithoutRoot("nobody".into())
    );
    let dir = std::env::temp_dir().join(format!("ringworker-passwd-{}", std::process::id()));
    std::fs::write(
        &dir,
        "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65533::/:/bin/false\n",
    )
    .unwrap();
    let root = Surroundings {
        euid: Some(0),
        passwd: dir.clone(),
        ..around()
    };
    let user_of = |user: &str| {
        let text =
            format!("[handlers.a]\nmode = \"exec\"\ncommand = [\"cat\"]\nuser = \"{user}\"\n");
        resolve_text(&text, &root).map(|set| set.handlers[0].user.clone().unwrap())
    };
    let nobody = user_of("nobody").unwrap();
    assert_eq!((nobody.uid, nobody.gid), (65534, 65533));
    let by_uid = user_of("65534").unwrap();
    assert_eq!((by_uid.uid, by_uid.gid), (65534, 65533));
    let not_listed = user_of("4242").unwrap();
    assert_eq!((not_listed.uid, not_listed.gid), (4242, 4242));
    let pair = user_of("10:20").unwrap();
    assert_eq!((pair.uid, pair.gid), (10, 20));
    for bad in ["nosuchuser", "1:x"] {
        assert!(
            matches!(&user_of(bad), Err(ConfigError::Handler { problem: HandlerProblem::UnknownUser(u), .. }) if u == bad),
            "{bad}"
        );
    }
    let _ = std::fs::remove_file(dir);
}

#[test]
fn handlers_come_from_the_file_only() {
    let mut flags = crate::config::tests::args(Some("tcp://127.0.0.1:1"));
    // A programmatic `Settings` of flags with a table: not read by merge.
    flags
        .handlers
        .insert("echo".into(), HandlerTable::default());
    assert!(Config::merge(&flags, Settings::default()).is_ok());
    let file = parse_file(
        "manager = \"tcp://127.0.0.1:1\"\n[handlers.echo]\nmode = \"exec\"\ncommand = [\"cat\"]\n",
    )
    .unwrap();
    let err = Config::merge(&Settings::default(), file).unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::Handler {
                problem: HandlerProblem::BuiltinName,
                ..
            }
        ),
        "{err:?}"
    );
    // The effective configuration of a file with handlers keeps its keys
    // and loads again (the tables are rendered by HandlerSet::to_toml).
    let file = parse_file(ISSUE_EXAMPLE).unwrap();
    let config = Config::merge(&Settings::default(), file.clone()).unwrap();
    let text = format!(
        "{}{}",
        config.effective_toml(),
        HandlerSet::resolve(&file.handlers, config.max_body)
            .unwrap()
            .to_toml()
    );
    let again = parse_file(&text).unwrap();
    assert_eq!(again.handlers.len(), 2);
    assert_eq!(
        Config::merge(&Settings::default(), again)
            .unwrap()
            .effective_toml(),
        config.effective_toml()
    );
}
