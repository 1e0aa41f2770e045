//! Several hosts on one machine: network namespaces joined by veth pairs,
//! all created (and removed) by the test. The manager (`ringworker-loadgen`)
//! and a real Prometheus live in one namespace, three agents in three others,
//! each on its own address. The test checks that every task is verified, that
//! the byte totals Prometheus scraped from each agent across the namespaces
//! equal the loadgen's own per-connection counts, and that a killed agent shows
//! `up == 0` while the other two carry on.
//!
//! Root is needed (`ip netns`); without it the test fails and says so (a
//! skipped test would hide what it guards). Everything (processes, namespaces, veths, temporary
//! files) is torn down by a guard, also when an assertion fails.
//!
//! Layout (`P` is the test's PID):
//!
//! ```text
//!  rwmgr-P: lo 10.213.255.1 (loadgen :7000), 127.0.0.1:9090 (Prometheus)
//!     rwm0-P 10.213.0.1/30 <-> rwa0-P 10.213.0.2/30  in rwa0-P (agent-0, :9464)
//!     rwm1-P 10.213.1.1/30 <-> rwa1-P 10.213.1.2/30  in rwa1-P (agent-1, :9464)
//!     rwm2-P 10.213.2.1/30 <-> rwa2-P 10.213.2.2/30  in rwa2-P (agent-2, :9464)
//! ```
//!
//! The agents redial after the loadgen's DRAIN, and the loadgen keeps its
//! listening socket open for a moment after the sessions have ended (report,
//! JSON): a redial in that window completes in the kernel's backlog and sends
//! a HELLO the loadgen never reads, which would move the agent's totals past
//! the loadgen's. So once every session is connected, each agent namespace
//! gets policy-routing rules that keep the established connections routed and
//! refuse new dials to the manager port (`prohibit`: the dial fails at once,
//! no byte moves). Each session's `/status` `connections` must then be 1.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::loadgen_bin;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{url_encode, wait_until};

const MANAGER_ADDR: &str = "10.213.255.1";
const MANAGER_PORT: u16 = 7000;
/// Prometheus' web listener, inside the manager namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
const AGENTS: usize = 3;
const SESSIONS_PER_AGENT: usize = 2;

fn agent_addr(n: usize) -> String {
    format!("10.213.{n}.2")
}

/// The agent's HTTP listener, also its Prometheus `instance` label.
fn agent_target(n: usize) -> String {
    format!("{}:9464", agent_addr(n))
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "`{name}` is not installed: this test needs iproute2 (ip, ss) and prometheus \
         (apt-get install iproute2 prometheus; scripts/test installs them)"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Run `command`, panicking with its stderr when it fails; returns stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new(tool("ip")).args(args))
}

/// A GET from inside namespace `ns` (a short Python client run with
/// `ip netns exec`, so the test itself never changes namespace).
fn get_in(ns: &str, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    const CLIENT: &str = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen('http://' + sys.argv[1] + sys.argv[2], timeout=10)\n    code, body = r.status, r.read()\n\
except urllib.error.HTTPError as e:\n    code, body = e.code, e.read()\n\
sys.stdout.write(str(code) + '\\n' + body.decode())\n";
    let output = Command::new(tool("ip"))
        .args(["netns", "exec", ns, "python3", "-c", CLIENT, addr, path])
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (code, body) = text.split_once('\n').unwrap_or((&text, ""));
    let code = code
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("bad answer: {text}")))?;
    Ok((code, body.to_owned()))
}

/// The namespaces, veths (inside them), processes and files of one run,
/// removed on drop whether the test passed or not.
struct Testbed {
    manager_ns: String,
    agent_ns: Vec<String>,
    children: Vec<(String, Child)>,
    dir: PathBuf,
}

impl Testbed {
    fn new() -> Testbed {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ringworker-multihost-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Testbed {
            manager_ns: format!("rwmgr-{pid}"),
            agent_ns: (0..AGENTS).map(|n| format!("rwa{n}-{pid}")).collect(),
            children: Vec::new(),
            dir,
        }
    }

    fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.manager_ns.clone())
            .chain(self.agent_ns.iter().cloned())
            .collect()
    }

    /// Namespaces, one veth pair per agent, addresses and routes.
    fn build_network(&self) {
        let pid = std::process::id();
        let mgr = self.manager_ns.as_str();
        for ns in self.namespaces() {
            // A leftover of an earlier run with the same PID, if any.
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            mgr,
            "addr",
            "add",
            &format!("{MANAGER_ADDR}/32"),
            "dev",
            "lo",
        ]);
        for (n, ns) in self.agent_ns.iter().enumerate() {
            // Created directly inside the namespaces: nothing appears in the
            // test's own namespace, and `ip netns del` removes the pair.
            let (m_if, a_if) = (format!("rwm{n}-{pid}"), format!("rwa{n}-{pid}"));
            ip(&[
                "link", "add", &m_if, "netns", mgr, "type", "veth", "peer", "name", &a_if, "netns",
                ns,
            ]);
            ip(&[
                "-n",
                mgr,
                "addr",
                "add",
                &format!("10.213.{n}.1/30"),
                "dev",
                &m_if,
            ]);
            ip(&["-n", mgr, "link", "set", &m_if, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", agent_addr(n)),
                "dev",
                &a_if,
            ]);
            ip(&["-n", ns, "link", "set", &a_if, "up"]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.213.{n}.1"),
            ]);
        }
    }

    /// Start `program args` inside `ns` (`ip netns exec` execs it, so the
    /// child's PID is the program's), stdout and stderr to `<name>.out` and
    /// `<name>.log`. Returns its index for `child`.
    fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[String]) -> usize {
        let out = File::create(self.dir.join(format!("{name}.out"))).unwrap();
        let log = File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(tool("ip"))
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push((name.to_owned(), child));
        self.children.len() - 1
    }

    fn child(&mut self, index: usize) -> &mut Child {
        &mut self.children[index].1
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for (name, _) in &self.children {
                for ext in ["out", "log"] {
                    let text = self.file(&format!("{name}.{ext}"));
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(30)..];
                    if !tail.is_empty() {
                        eprintln!("--- {name}.{ext} (last {} lines)", tail.len());
                        for line in tail {
                            eprintln!("{line}");
                        }
                    }
                }
            }
        }
        for ns in self.namespaces() {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One sample of a Prometheus instant-query result.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// An instant query against the Prometheus in namespace `ns`.
fn query(ns: &str, expr: &str) -> Option<Vec<Sample>> {
    let (status, body) = get_in(
        ns,
        PROMETHEUS,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            Some(Sample {
                labels: serde_json::from_value(r["metric"].clone()).ok()?,
                value: r["value"][1].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

/// `expr`'s value per `instance`.
fn by_instance(ns: &str, expr: &str) -> BTreeMap<String, f64> {
    query(ns, expr)
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            (
                s.labels.get("instance").cloned().unwrap_or_default(),
                s.value,
            )
        })
        .collect()
}

/// `expr`'s value per (`instance`, `session`).
fn by_instance_session(ns: &str, expr: &str) -> BTreeMap<(String, String), f64> {
    query(ns, expr)
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            ((label("instance"), label("session")), s.value)
        })
        .collect()
}

/// Each agent session's scraped (bytes sent, bytes received) gauges, grouped
/// by session number, each group sorted.
fn per_session(ns: &str) -> BTreeMap<String, Vec<(u64, u64)>> {
    let sent = by_instance_session(ns, "ringworker_session_bytes_sent");
    let received = by_instance_session(ns, "ringworker_session_bytes_received");
    let mut pairs: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (key, s) in &sent {
        if let Some(r) = received.get(key) {
            pairs
                .entry(key.1.clone())
                .or_default()
                .push((*s as u64, *r as u64));
        }
    }
    pairs.values_mut().for_each(|v| v.sort_unstable());
    pairs
}

/// Source ports of `ns`'s established connections to the manager.
fn manager_connections(ns: &str) -> Vec<u16> {
    let out = run(Command::new(tool("ip")).args(["netns", "exec", ns]).args([
        tool("ss").to_str().unwrap(),
        "-Htn",
        "state",
        "established",
        "dst",
        &format!("{MANAGER_ADDR}:{MANAGER_PORT}"),
    ]));
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Recv-Q Send-Q Local:Port Peer:Port
            fields.get(2)?.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

#[test]
fn three_agents_in_namespaces_scraped_by_prometheus() {
    // No silent skip: without root the test fails and says why.
    assert!(
        is_root(),
        "multihost: needs root for ip netns (run the tests as root, as CI does)"
    );
    // Fail early and clearly when a tool is missing.
    for name in ["ip", "ss", "prometheus"] {
        tool(name);
    }
    let loadgen = loadgen_bin();
    let agent_bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_ringworker")).unwrap();

    let mut bed = Testbed::new();
    bed.build_network();
    let mgr = bed.manager_ns.clone();
    let targets: Vec<String> = (0..AGENTS).map(agent_target).collect();

    // Prometheus, in the manager namespace, scraping the three agents.
    let config = bed.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ringworker\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let prometheus_args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", bed.dir.join("data").display()),
        format!("--web.listen-address={PROMETHEUS}"),
    ];
    bed.spawn("prometheus", &mgr, &tool("prometheus"), &prometheus_args);
    assert!(
        wait_until(Duration::from_secs(60), || get_in(
            &mgr, PROMETHEUS, "/-/ready"
        )
        .is_ok_and(|(s, _)| s == 200)),
        "Prometheus did not become ready in namespace {mgr}"
    );

    // The agents, each in its namespace on its own address. They dial a
    // manager that is not listening yet: refused dials move no bytes.
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let args: Vec<String> = [
            "run",
            "--manager",
            &format!("tcp://{MANAGER_ADDR}:{MANAGER_PORT}"),
            "--sessions",
            &SESSIONS_PER_AGENT.to_string(),
            "--metrics-addr",
            &agent_target(n),
            "--worker-id",
            &format!("agent-{n}"),
            "--reconnect-min",
            "200",
            "--reconnect-max",
            "1000",
        ]
        .map(str::to_owned)
        .to_vec();
        let ns = bed.agent_ns[n].clone();
        agents.push(bed.spawn(&format!("agent-{n}"), &ns, &agent_bin, &args));
    }
    for (n, &index) in agents.iter().enumerate() {
        // `ip netns exec` execs: the child's PID is the agent's.
        let pid = bed.child(index).id();
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_link(format!(
                "/proc/{pid}/exe"
            ))
            .is_ok_and(|exe| exe == agent_bin)),
            "agent-{n}: PID {pid} is not the ringworker binary: {:?}",
            std::fs::read_link(format!("/proc/{pid}/exe"))
        );
        // Reached from the manager namespace, across its veth.
        let target = agent_target(n);
        assert!(
            wait_until(Duration::from_secs(30), || get_in(
                &mgr, &target, "/healthz"
            )
            .is_ok_and(|(s, _)| s == 200)),
            "agent-{n} /healthz at {target} from namespace {mgr}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let up = by_instance(&mgr, "up{job=\"ringworker\"}");
            targets.iter().all(|t| up.get(t) == Some(&1.0))
        }),
        "Prometheus scrapes all three agents: up = {:?}",
        by_instance(&mgr, "up{job=\"ringworker\"}")
    );

    // The manager: six sessions (two per agent), a verified mixed workload,
    // then DRAIN.
    let report = bed.dir.join("report.json");
    let loadgen_args: Vec<String> = vec![
        format!("--listen=tcp://{MANAGER_ADDR}:{MANAGER_PORT}"),
        format!("--sessions={}", AGENTS * SESSIONS_PER_AGENT),
        "--duration=6".into(),
        "--handler=echo:3,crc32c:1,sha256:1".into(),
        "--payload=16..1024".into(),
        format!("--json={}", report.display()),
    ];
    let loadgen_index = bed.spawn("loadgen", &mgr, &loadgen, &loadgen_args);

    // Once each agent has its two connections: keep them, refuse new dials
    // to the manager port (see the module comment).
    for (n, ns) in bed.agent_ns.clone().iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(60), || manager_connections(ns).len()
                == SESSIONS_PER_AGENT),
            "agent-{n}: {SESSIONS_PER_AGENT} connections to the manager, have {:?}",
            manager_connections(ns)
        );
        let port = MANAGER_PORT.to_string();
        for sport in manager_connections(ns) {
            ip(&[
                "-n",
                ns,
                "rule",
                "add",
                "priority",
                "100",
                "ipproto",
                "tcp",
                "dport",
                &port,
                "sport",
                &sport.to_string(),
                "lookup",
                "main",
            ]);
        }
        ip(&[
            "-n", ns, "rule", "add", "priority", "101", "ipproto", "tcp", "dport", &port,
            "prohibit",
        ]);
    }

    let mut loadgen_status = None;
    assert!(
        wait_until(Duration::from_secs(120), || {
            loadgen_status = bed.child(loadgen_index).try_wait().unwrap();
            loadgen_status.is_some()
        }),
        "the loadgen did not finish within 120 s"
    );
    let loadgen_status = loadgen_status.unwrap();
    assert!(
        loadgen_status.success(),
        "the loadgen failed ({loadgen_status}): not every task verified or byte totals differ\n{}\n{}",
        bed.file("loadgen.out"),
        bed.file("loadgen.log")
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(r["tasks_ok"].as_u64().unwrap() > 0, "{r}");
    for key in [
        "tasks_failed",
        "tasks_wrong",
        "tasks_lost",
        "accounting_mismatches",
    ] {
        assert_eq!(r[key], 0, "{key} in the loadgen's report");
    }
    assert_eq!(r["sessions"], AGENTS * SESSIONS_PER_AGENT);
    let conns = r["connections"].as_array().unwrap();
    assert_eq!(conns.len(), AGENTS * SESSIONS_PER_AGENT, "{r}");
    let field = |c: &serde_json::Value, key: &str| -> u64 {
        c[key]
            .as_u64()
            .unwrap_or_else(|| panic!("connection without {key}: {c}"))
    };
    for c in conns {
        assert_eq!(c["accounting_exact"], true, "{c}");
        assert_eq!(field(c, "agent_bytes_sent"), field(c, "bytes_received"));
        assert_eq!(field(c, "agent_bytes_received"), field(c, "bytes_sent"));
    }

    // Every session ended after the DRAIN; each had exactly one connection
    // (the run's), so the agents' totals are those connections' bytes.
    let status = |n: usize| -> serde_json::Value {
        let (code, body) = get_in(&mgr, &agent_target(n), "/status").unwrap();
        assert_eq!(code, 200, "agent-{n} /status: {body}");
        serde_json::from_str(&body).unwrap()
    };
    for n in 0..AGENTS {
        assert!(
            wait_until(Duration::from_secs(30), || status(n)["connected_sessions"]
                == 0),
            "agent-{n}: sessions still connected after the DRAIN: {}",
            status(n)
        );
    }
    let before: Vec<serde_json::Value> = (0..AGENTS).map(status).collect();
    for (n, s) in before.iter().enumerate() {
        assert_eq!(s["agent"], format!("agent-{n}"));
        let sessions = s["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), SESSIONS_PER_AGENT, "{s}");
        for session in sessions {
            assert_eq!(
                session["connections"], 1,
                "agent-{n}: a session connected more than once: {s}"
            );
        }
        for dir in ["sent", "received"] {
            let total = s[format!("bytes_{dir}_total")].as_u64().unwrap();
            let sum: u64 = sessions
                .iter()
                .map(|x| x[format!("bytes_{dir}")].as_u64().unwrap())
                .sum();
            assert!(total > 0, "agent-{n} took part: {s}");
            assert_eq!(
                total, sum,
                "agent-{n}: bytes_{dir}_total = its sessions' sum"
            );
        }
    }

    // Prometheus' last scrapes: per agent equal to its /status, to the byte.
    let expected: BTreeMap<String, (f64, f64)> = before
        .iter()
        .enumerate()
        .map(|(n, s)| {
            (
                agent_target(n),
                (
                    s["bytes_sent_total"].as_u64().unwrap() as f64,
                    s["bytes_received_total"].as_u64().unwrap() as f64,
                ),
            )
        })
        .collect();
    let scraped = || -> BTreeMap<String, (f64, f64)> {
        let sent = by_instance(&mgr, "ringworker_bytes_sent_total");
        let received = by_instance(&mgr, "ringworker_bytes_received_total");
        sent.into_iter()
            .filter_map(|(i, s)| Some((i.clone(), (s, *received.get(&i)?))))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || scraped() == expected),
        "Prometheus' (sent, received) per agent {:?}, the agents' /status {expected:?}",
        scraped()
    );
    // Per connection: every agent session's scraped gauges are one of the
    // loadgen's connections with that session number, the counts seen from
    // both ends (the session number is the agent's, so each occurs once per
    // agent).
    let mut per_session_loadgen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for c in conns {
        per_session_loadgen
            .entry(c["session"].as_u64().unwrap().to_string())
            .or_default()
            .push((field(c, "bytes_received"), field(c, "bytes_sent")));
    }
    per_session_loadgen
        .values_mut()
        .for_each(|v| v.sort_unstable());
    assert!(
        wait_until(Duration::from_secs(30), || per_session(&mgr)
            == per_session_loadgen),
        "per session (agent sent, agent received): Prometheus {:?}, loadgen {per_session_loadgen:?}",
        per_session(&mgr)
    );
    // All agents together against all of the loadgen's connections.
    let loadgen_received: u64 = conns.iter().map(|c| field(c, "bytes_received")).sum();
    let loadgen_sent: u64 = conns.iter().map(|c| field(c, "bytes_sent")).sum();
    let prom_sent: f64 = scraped().values().map(|v| v.0).sum();
    let prom_received: f64 = scraped().values().map(|v| v.1).sum();
    assert_eq!(
        prom_sent, loadgen_received as f64,
        "agents sent = loadgen received"
    );
    assert_eq!(
        prom_received, loadgen_sent as f64,
        "agents received = loadgen sent"
    );
    eprintln!(
        "multihost: {} tasks verified; bytes agents -> loadgen {loadgen_received}, loadgen -> agents {loadgen_sent}; per agent (sent, received): {expected:?}",
        r["tasks_ok"]
    );
    // The agents redial a manager that is gone: no bytes move.
    for (n, s) in before.iter().enumerate() {
        let now = status(n);
        for key in ["bytes_sent_total", "bytes_received_total"] {
            assert_eq!(now[key], s[key], "agent-{n} {key} moved after the run");
        }
    }

    // Kill agent 0 (SIGKILL to its PID): its target goes down, the others stay up.
    let killed = agents[0];
    let pid = bed.child(killed).id();
    run(Command::new("kill").args(["-s", "KILL", &pid.to_string()]));
    let exit = bed.child(killed).wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(9), "agent-0 died of SIGKILL: {exit}");
    assert!(
        wait_until(Duration::from_secs(30), || by_instance(&mgr, "up")
            .get(&targets[0])
            == Some(&0.0)),
        "up for the killed agent-0: {:?}",
        by_instance(&mgr, "up")
    );
    // A few more scrapes: the two others were up the whole time and still are.
    std::thread::sleep(Duration::from_secs(3));
    let up = by_instance(&mgr, "up");
    let min_up = by_instance(&mgr, "min_over_time(up[20s])");
    assert_eq!(up.get(&targets[0]), Some(&0.0), "up {up:?}");
    for (n, target) in targets.iter().enumerate().skip(1) {
        assert_eq!(up.get(target), Some(&1.0), "agent-{n} up: {up:?}");
        assert_eq!(
            min_up.get(target),
            Some(&1.0),
            "agent-{n} never missed a scrape: {min_up:?}"
        );
        assert!(
            bed.child(agents[n]).try_wait().unwrap().is_none(),
            "agent-{n} still runs"
        );
        assert_eq!(
            get_in(&mgr, target, "/healthz").unwrap().0,
            200,
            "agent-{n} /healthz"
        );
    }

    // Teardown (the guard), then nothing of ours is left.
    let namespaces = bed.namespaces();
    drop(bed);
    let left = ip(&["netns", "list"]);
    for ns in namespaces {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&ns)),
            "namespace {ns} left behind: {left}"
        );
    }
}
