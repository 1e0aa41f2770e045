//! Resource use of a process, from /proc: CPU seconds (user and kernel
//! apart) and resident memory, of the loadgen itself (`"self"`) or of the
//! spawned agent. A value that cannot be read is `None`, never an error: the
//! report then leaves it out.

pub use ringworker_loadgen::report::CpuTimes;

/// USER_HZ, the unit of the times in /proc/PID/stat: 100 on every Linux
/// architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU times of a process, from /proc/PID/stat.
pub fn cpu_times(pid: &str) -> Option<CpuTimes> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` and `stime`, fields 14 and 15 of a /proc/PID/stat line (proc(5)).
/// Field 2, the command name, is in parentheses and may itself hold spaces
/// and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    // The fields after the name start at field 3 (`state`).
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user_s: utime as f64 / TICKS_PER_SECOND,
        sys_s: stime as f64 / TICKS_PER_SECOND,
    })
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/PID/stat line of `comm` whose field 14 is `utime` and field
    /// 15 is `stime`; the fields around them hold other numbers.
    fn stat_line(comm: &str, utime: u64, stime: u64) -> String {
        let mut fields = vec![format!("4242 ({comm}) R")];
        // Fields 4..=13: ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt.
        fields.extend((4..=13).map(|n| (n * 1000 + 7).to_string()));
        fields.push(utime.to_string());
        fields.push(stime.to_string());
        // Fields 16..=52: cutime cstime priority nice ... exit_code.
        fields.extend((16..=52).map(|n| (n * 1000 + 3).to_string()));
        fields.join(" ") + "\n"
    }

    #[test]
    fn user_and_kernel_time_are_fields_14_and_15() {
        let cpu = parse_stat(&stat_line("ringworker", 1234, 567)).unwrap();
        assert_eq!(
            cpu,
            CpuTimes {
                user_s: 12.34,
                sys_s: 5.67
            }
        );
        assert!((cpu.total_s() - 18.01).abs() < 1e-9);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        for comm in [
            "a b",
            "x) R 1 2 3 (y",
            "(sd-pam)",
            ") 9 9 9 9 9 9 9 9 9 9 9 9 9",
            "",
        ] {
            let line = stat_line(comm, 250, 31);
            assert_eq!(
                parse_stat(&line),
                Some(CpuTimes {
                    user_s: 2.5,
                    sys_s: 0.31
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn a_truncated_or_garbled_line_is_none() {
        let whole = stat_line("agent", 1, 2);
        let cut = whole.find(" 1 2 ").unwrap() + 2;
        assert_eq!(parse_stat(&whole[..cut]), None, "{}", &whole[..cut]);
        assert_eq!(parse_stat("4242 agent R 1 2 3"), None);
        assert_eq!(
            parse_stat(&stat_line("agent", 1, 2).replace(" 1 2 ", " 1 x ")),
            None
        );
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn the_window_between_two_samples_keeps_user_and_kernel_apart() {
        let start = CpuTimes {
            user_s: 1.0,
            sys_s: 2.0,
        };
        let end = CpuTimes {
            user_s: 1.75,
            sys_s: 4.5,
        };
        let window = end.since(start);
        assert_eq!(
            window,
            CpuTimes {
                user_s: 0.75,
                sys_s: 2.5
            }
        );
        assert_eq!(window.total_s(), 3.25);
    }

    #[test]
    fn this_process_has_readable_cpu_times() {
        let cpu = cpu_times("self").expect("/proc/self/stat");
        assert!(cpu.user_s >= 0.0 && cpu.sys_s >= 0.0, "{cpu:?}");
        assert_eq!(cpu_times("0"), None);
    }
}
