#!/usr/bin/env python3
"""Side-by-side comparison of the ringworker runtimes and the epoll reference.

Builds release binaries, then measures with ringworker-loadgen, in one run:
worker {uring, blocking, epoll} x sessions {1, 16, 256} x payload {64 B, 4 KiB,
1 MiB} x handler {echo, sink} x concurrency {1, 32}, each configuration
repeated with the workers alternating (identical runs differ by up to 20 %
on a shared 2-core machine), medians reported. Also: iperf3 over loopback as
the wire's limit, syscalls per task under strace for the headline rows, and
the idle-session memory test. Writes BENCHMARKS.md and benches/scaling.svg.

    benches/compare.sh                # the full matrix (about 30 minutes)
    benches/compare.sh --quick        # headline rows only (about 5 minutes)
    benches/compare.sh --cpu-split    # uring against epoll, CPU split (benches/CPU_SPLIT.md)
    benches/compare.py --table-from runs.json   # the tables again from saved runs

Every row shows the worker's CPU per task as a total and split into user
space and kernel time (utime and stime of /proc/PID/stat over the measured
window), each against the epoll reference.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
WORKERS = {
    "uring": ("uring", os.path.join(BIN, "ringworker")),
    "blocking": ("blocking", os.path.join(BIN, "ringworker")),
    "epoll": ("epoll", os.path.join(BIN, "epoll-reference")),
    # The uring runtime with one event-loop thread (its default is one per CPU).
    "uring-1t": ("uring", os.path.join(BIN, "ringworker")),
}
WORKER_ARGS = {"uring-1t": ["--threads=1"]}
MIB = 1024 * 1024


def loadgen(worker, sessions, payload, handler, concurrency, seconds, warmup, extra_agent_args=(), scheme="tcp",
            extra_loadgen_args=()):
    runtime, agent_bin = WORKERS[worker]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = f.name
    cmd = [
        os.path.join(BIN, "ringworker-loadgen"), "--listen", f"{scheme}://127.0.0.1:0",
        "--spawn", runtime, "--agent-bin", agent_bin, "--sessions", str(sessions),
        "--handler", handler, "--payload", str(payload), "--concurrency", str(concurrency),
        "--duration", str(seconds), "--warmup", str(warmup), "--json", report,
        "--connect-timeout", "60",
    ]
    for arg in list(WORKER_ARGS.get(worker, [])) + list(extra_agent_args):
        cmd.append(f"--agent-arg={arg}")
    if extra_loadgen_args:
        # An open-loop rate replaces the closed loop's --concurrency.
        cmd = [a for i, a in enumerate(cmd) if a != "--concurrency" and (i == 0 or cmd[i - 1] != "--concurrency")]
        cmd += list(extra_loadgen_args)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + warmup + 120)
    try:
        with open(report) as f:
            data = json.load(f)
        data["latency_p99"] = data["latency_us"]["p99"]
        return data
    except (OSError, json.JSONDecodeError, KeyError):
        return None
    finally:
        os.unlink(report)


def iperf3(seconds):
    if not shutil.which("iperf3"):
        return None
    port = "5299"
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", port, "-l", "1M", "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout)
        return data["end"]["sum_received"]["bits_per_second"] / 8 / MIB
    except (subprocess.SubprocessError, json.JSONDecodeError, KeyError):
        return None
    finally:
        server.kill()
        server.wait()


def syscalls_per_task(worker, sessions, seconds=4):
    """strace -f -c on an agent driven by an external loadgen."""
    if not shutil.which("strace"):
        return None
    runtime, agent_bin = WORKERS[worker]
    port = str(20000 + sessions)
    lg = subprocess.Popen([os.path.join(BIN, "ringworker-loadgen"), "--listen", f"tcp://127.0.0.1:{port}",
                           "--sessions", str(sessions), "--concurrency", "32", "--payload", "64",
                           "--duration", str(seconds), "--json", f"/tmp/rw-strace-{port}.json"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    with tempfile.NamedTemporaryFile(suffix=".strace", delete=False) as f:
        trace = f.name
    agent = subprocess.Popen(["strace", "-f", "-c", "-o", trace, agent_bin, "run", "--manager",
                              f"tcp://127.0.0.1:{port}", "--runtime", runtime, "--sessions", str(sessions),
                              "--metrics-addr", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lg.wait(timeout=seconds + 120)
    time.sleep(0.5)
    # Stop the traced agent (by the PID of the child strace runs).
    children = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    try:
        agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
    try:
        with open(f"/tmp/rw-strace-{port}.json") as f:
            tasks = json.load(f)["tasks_ok"]
        total = 0
        for line in open(trace):
            parts = line.split()
            # "100.00  seconds  usecs/call  calls  [errors]  total"
            if len(parts) >= 5 and parts[-1] == "total":
                total = int(parts[3])
        return total / tasks if tasks else None
    except (OSError, ValueError, KeyError, IndexError):
        return None
    finally:
        for path in (trace, f"/tmp/rw-strace-{port}.json"):
            if os.path.exists(path):
                os.unlink(path)


def idle_sessions(count=10000):
    """RSS of one uring agent holding `count` idle sessions, and how long their handshakes took.

    The sessions get 100 tasks/s in all (one task per session every 100 s at
    10,000) for 4 s: the RSS is read when the last handshake completes and
    again at the end, once the loop has settled (it gives back the pages
    the connect burst touched after a quiet second)."""
    result = loadgen("uring", count, 64, "sink", 1, 4, 0, ["--reconnect-min=1000"],
                     extra_loadgen_args=["--rate", "100"])
    if not result:
        return None
    return result.get("agent_rss_kib_connected"), result.get("agent_rss_kib_end"), result.get("connect_s")


TLS_CONFIGS = ((16, 4096, "echo", 32), (1, MIB, "sink", 32))


def tls_comparison(repeats, seconds, warmup):
    """TLS against plain TCP, both runtimes, alternating; certificates made by the loadgen."""
    results = {}
    for repeat in range(repeats):
        for config in TLS_CONFIGS:
            for worker in ("uring", "blocking"):
                for scheme in (("tcp", "tls") if repeat % 2 == 0 else ("tls", "tcp")):
                    sessions, payload, handler, c = config
                    r = loadgen(worker, sessions, payload, handler, c, seconds, warmup, scheme=scheme)
                    ok = r and r["tasks_wrong"] == 0 and r["tasks_lost"] == 0 and r.get("accounting_exact", True)
                    if ok:
                        results.setdefault((worker, scheme) + config, []).append(r)
                    print(f"[tls {repeat + 1}/{repeats}] {worker:8} {scheme} s={sessions:<3} {fmt_payload(payload):>6} "
                          f"{handler:4} {(r or {}).get('tasks_per_sec', 0):>12,.0f} tasks/s", file=sys.stderr)

    def med(key, *k):
        runs = results.get(k)
        values = [r[key] for r in runs or [] if r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = ["", "**TLS 1.3 against plain TCP** (same run, alternating; the loadgen serves TLS with a throwaway "
             "CA it generates, `ringworker-loadgen --listen tls://127.0.0.1:0 --spawn ...`; bytes are socket "
             "bytes, accounting exact in every run):", "",
             "| worker | sessions | payload | handler | in flight | TCP tasks/s | TLS tasks/s | TLS/TCP | TCP MiB/s | TLS MiB/s | TCP CPU µs/task | TLS CPU µs/task | TLS p99 µs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for config in TLS_CONFIGS:
        sessions, payload, handler, c = config
        for worker in ("uring", "blocking"):
            tcp = med("tasks_per_sec", worker, "tcp", *config)
            tls = med("tasks_per_sec", worker, "tls", *config)
            if not tcp or not tls:
                continue
            cells = [med(k, worker, t, *config) or 0 for k, t in (("payload_mib_per_sec", "tcp"), ("payload_mib_per_sec", "tls"),
                                                                  ("agent_cpu_us_per_task", "tcp"), ("agent_cpu_us_per_task", "tls"),
                                                                  ("latency_p99", "tls"))]
            lines.append(f"| {worker} | {sessions} | {fmt_payload(payload)} | {handler} | {c} | {tcp:,.0f} | {tls:,.0f} | "
                         f"{tls / tcp:.2f}× | {cells[0]:,.1f} | {cells[1]:,.1f} | {cells[2]:.3f} | {cells[3]:.3f} | {cells[4]:,.0f} |")
    return lines


def matrix(quick):
    rows = []
    if quick:
        for sessions in (1, 16, 256):
            for c in ((1, 32) if sessions == 1 else (32,)):
                rows.append((sessions, 64, "echo", c))
        rows.append((1, MIB, "sink", 32))
    else:
        for sessions in (1, 16, 256):
            for payload in (64, 4096, MIB):
                for handler in ("echo", "sink"):
                    for c in (1, 32):
                        if payload == MIB and sessions * c > 64:
                            c = max(1, 64 // sessions)  # keep 1 MiB runs within memory
                        rows.append((sessions, payload, handler, c))
    seen, unique = set(), []
    for row in rows:
        if row not in seen:
            seen.add(row)
            unique.append(row)
    return unique


def fmt_payload(p):
    return "1 MiB" if p == MIB else ("4 KiB" if p == 4096 else f"{p} B")

# The CPU columns of every row: (report key, header), the total first.
CPU_KEYS = (("agent_cpu_us_per_task", "CPU µs/task"),
            ("agent_cpu_user_us_per_task", "user µs/task"),
            ("agent_cpu_sys_us_per_task", "kernel µs/task"))


def ratio(value, base):
    return f"{value / base:.2f}×" if value is not None and base else "–"


def main_table(configs, med, iperf):
    """The headline table: one row per worker and configuration, medians."""
    header = (["worker", "sessions", "payload", "handler", "in flight", "tasks/s", "payload MiB/s", "p99 µs"]
              + [h for _, h in CPU_KEYS] + ["tasks/s vs epoll"] + [f"{h.split(' ')[0]}/task vs epoll" for _, h in CPU_KEYS]
              + ["vs iperf3"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in configs:
        sessions, payload, handler, c = config
        base_tps = med("epoll", config, "tasks_per_sec")
        base_cpu = [med("epoll", config, key) for key, _ in CPU_KEYS]
        for worker in ("uring", "uring-1t", "epoll", "blocking"):
            tps = med(worker, config, "tasks_per_sec")
            if tps is None:
                continue
            mib = med(worker, config, "payload_mib_per_sec") or 0
            p99 = med(worker, config, "latency_p99") or 0
            cpu = [med(worker, config, key) for key, _ in CPU_KEYS]
            vs_wire = f"{100 * mib / iperf:.0f} %" if iperf and payload == MIB else ""
            cells = ([worker, sessions, fmt_payload(payload), handler, c, f"{tps:,.0f}", f"{mib:,.1f}", f"{p99:,.0f}"]
                     + [f"{v:.3f}" if v is not None else "–" for v in cpu] + [ratio(tps, base_tps)]
                     + [ratio(v, b) for v, b in zip(cpu, base_cpu)] + [vs_wire])
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


CPU_SPLIT_CONFIGS = ((256, 64, "echo", 32), (16, 64, "echo", 32), (256, 64, "echo", 1))
SPLIT_KEYS = (("tasks_per_sec", "tasks/s", "{:,.0f}"),
              ("agent_cpu_user_us_per_task", "user µs/task", "{:.3f}"),
              ("agent_cpu_sys_us_per_task", "kernel µs/task", "{:.3f}"),
              ("agent_cpu_us_per_task", "total µs/task", "{:.3f}"),
              ("loadgen_cpu_us_per_task", "loadgen µs/task", "{:.3f}"))


def split_table(configs, runs):
    """uring against epoll: median (min–max) of each figure, and the ratio of the medians."""
    def values(worker, config, key):
        return [r[key] for r in runs.get((worker,) + config, []) if r.get(key) is not None]

    header = ["worker", "sessions", "in flight", "runs"] + [h for _, h, _ in SPLIT_KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in configs:
        sessions, _, _, c = config
        medians = {}
        for worker in ("uring", "epoll"):
            cells = [worker, str(sessions), str(c), str(len(runs.get((worker,) + config, [])))]
            for key, _, form in SPLIT_KEYS:
                v = values(worker, config, key)
                medians[(worker, key)] = statistics.median(v) if v else None
                cells.append(f"{form.format(statistics.median(v))} ({form.format(min(v))}–{form.format(max(v))})"
                             if v else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("| uring/epoll | " + f"{sessions} | {c} | | "
                     + " | ".join(ratio(medians[("uring", k)], medians[("epoll", k)]) for k, _, _ in SPLIT_KEYS) + " |")
    return lines


def cpu_split(repeats, seconds, warmup, save):
    """64 B echo, uring and epoll alternating run by run; /proc/loadavg before each run."""
    runs, log = {}, []
    for config in CPU_SPLIT_CONFIGS:
        sessions, payload, handler, c = config
        for repeat in range(repeats):
            for worker in ("uring", "epoll"):
                with open("/proc/loadavg") as f:
                    load = " ".join(f.read().split()[:3])
                r = loadgen(worker, sessions, payload, handler, c, seconds, warmup)
                ok = r and r["tasks_wrong"] == 0 and r["tasks_lost"] == 0
                if ok:
                    r.update(worker=worker, sessions=sessions, payload=payload, handler=handler, concurrency=c, loadavg=load)
                    runs.setdefault((worker,) + config, []).append(r)
                    log.append(r)
                print(f"[{repeat + 1}/{repeats}] load {load}  {worker:5} s={sessions:<3} c={c:<2} "
                      f"{(r or {}).get('tasks_per_sec', 0):>10,.0f} tasks/s  user "
                      f"{(r or {}).get('agent_cpu_user_us_per_task') or 0:.3f}  kernel "
                      f"{(r or {}).get('agent_cpu_sys_us_per_task') or 0:.3f} µs/task" + ("" if ok else "  FAILED"),
                      file=sys.stderr)
    if save:
        with open(save, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "connections"} for r in log], f, indent=1)
    return split_table(CPU_SPLIT_CONFIGS, runs)


def table_from(path):
    """The tables again from saved runs: a JSON list of loadgen reports, each with the
    keys worker, sessions, payload, handler and concurrency added (as --save writes)."""
    with open(path) as f:
        saved = json.load(f)
    runs, configs = {}, []
    for r in saved:
        config = (int(r["sessions"]), int(r["payload"]), r["handler"], int(r["concurrency"]))
        r.setdefault("latency_p99", (r.get("latency_us") or {}).get("p99"))
        runs.setdefault((r["worker"],) + config, []).append(r)
        if config not in configs:
            configs.append(config)

    def med(worker, config, key):
        values = [r[key] for r in runs.get((worker,) + config, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    return main_table(configs, med, None) + [""] + split_table(configs, runs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--tls-only", action="store_true",
                        help="run only the TLS-against-TCP rows and print them (BENCHMARKS.md untouched)")
    parser.add_argument("--cpu-split", action="store_true",
                        help="run only uring against epoll, 64 B echo, and print user and kernel CPU per task "
                             "(median and min-max; BENCHMARKS.md untouched)")
    parser.add_argument("--save", metavar="PATH", help="with --cpu-split: write every run's report to PATH")
    parser.add_argument("--table-from", metavar="PATH",
                        help="print the tables from runs saved with --save, running nothing")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries already in target/")
    args = parser.parse_args()
    if args.table_from:
        print("\n".join(table_from(args.table_from)))
        return
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "-q"], cwd=ROOT, check=True)
    if args.cpu_split:
        print("\n".join(cpu_split(args.repeats, args.seconds, args.warmup, args.save)))
        return
    if args.tls_only:
        print("\n".join(tls_comparison(args.repeats, args.seconds, args.warmup)))
        return

    results = {}
    configs = matrix(args.quick)
    for repeat in range(args.repeats):
        for config in configs:
            workers = ["uring", "epoll", "blocking"]
            if config[1] == 64 and config[3] == 32 and config[0] > 1:
                workers.insert(1, "uring-1t")
            for worker in workers if repeat % 2 == 0 else reversed(workers):
                sessions, payload, handler, c = config
                r = loadgen(worker, sessions, payload, handler, c, args.seconds, args.warmup)
                if r and r["tasks_wrong"] == 0 and r["tasks_lost"] == 0:
                    results.setdefault((worker,) + config, []).append(r)
                print(f"[{repeat + 1}/{args.repeats}] {worker:8} s={sessions:<3} {fmt_payload(payload):>6} {handler:4} c={c:<2} "
                      f"{(r or {}).get('tasks_per_sec', 0):>12,.0f} tasks/s", file=sys.stderr)
    wire = [v for v in (iperf3(5) for _ in range(args.repeats)) if v]
    iperf = statistics.median(wire) if wire else None
    syscalls = {(w, s): syscalls_per_task(w, s) for w in ("uring", "epoll", "blocking") for s in (16, 256)}
    idle = idle_sessions()
    tls_lines = tls_comparison(args.repeats, args.seconds, args.warmup)

    def med(worker, config, key):
        runs = results.get((worker,) + config)
        if not runs:
            return None
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = ["# Benchmarks", "",
             "Made by `benches/compare.sh" + (" --quick" if args.quick else "") + f"` on {time.strftime('%Y-%m-%d')}: "
             f"{os.cpu_count()} cores shared by the loadgen and the worker, loopback TCP, release builds, "
             f"{args.repeats} runs of {args.seconds:g} s (after {args.warmup:g} s of warmup) per row with the workers "
             "alternating; medians. `epoll` is `benches/epoll-reference` (tokio, multi-thread, batched I/O). "
             "`uring` runs with its default of one event-loop thread per CPU (2 here); `uring-1t` with "
             "`--threads 1` (64 B echo rows with several sessions): with the loadgen on the same 2 cores, one "
             "loop thread avoids a preempted loop stalling its sessions. "
             "CPU is the worker's user+system time per task over the measured window; user and kernel are "
             "the two apart (utime and stime of /proc/PID/stat).", ""]
    if iperf:
        lines += [f"**Wire limit:** `iperf3 -l 1M` over loopback, single stream: **{iperf:,.0f} MiB/s**.", ""]
    lines += main_table(configs, med, iperf)
    lines += ["", "**Syscalls per task** (64 B echo, 32 in flight per session, `strace -f -c` on the worker; "
              "strace slows every worker, the ratio is what matters):", "",
              "| worker | 16 sessions | 256 sessions |", "|---|---|---|"]
    for worker in ("uring", "epoll", "blocking"):
        cells = [f"{syscalls[(worker, s)]:.4f}" if syscalls[(worker, s)] is not None else "–" for s in (16, 256)]
        lines.append(f"| {worker} | {cells[0]} | {cells[1]} |")
    if idle and idle[0]:
        settled = f", {idle[1] / 1024:.1f} MiB once settled (4 s later, 100 tasks/s in all)" if idle[1] else ""
        lines += ["", f"**Idle sessions:** 10,000 connected uring sessions in one agent: RSS {idle[0] / 1024:.1f} MiB "
                  f"when the last handshake completed{settled}; all handshakes completed in {idle[2]:.2f} s."]
    lines += tls_lines
    lines += ["", "![tasks/s against sessions](benches/scaling.svg)", "",
              "Profiles, side-by-side measurements of single changes and what limits each ratio: "
              "[benches/INVESTIGATIONS.md](benches/INVESTIGATIONS.md).", ""]
    kept = kept_sections(os.path.join(ROOT, "BENCHMARKS.md"), set())
    lines += kept
    if "## Scrape cost" not in kept:
        lines += ["## Scrape cost", "",
                  "Before and after at 1,000 sessions: [benches/SCRAPE.md](benches/SCRAPE.md) "
                  "(`benches/metrics_cost.sh scrape`).", ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(lines))
    write_svg(results, os.path.join(ROOT, "benches", "scaling.svg"), med)
    print("\n".join(lines))


def kept_sections(path, generated):
    """The `## ` sections of the existing file (dated sittings and notes written by hand),
    in their order, but those in `generated`: a new matrix keeps them."""
    try:
        with open(path) as f:
            text = f.read().splitlines()
    except OSError:
        return []
    kept, keep = [], False
    for line in text:
        if line.startswith("## "):
            keep = line[3:].strip() not in generated
        elif line.startswith("# "):
            keep = False
        if keep:
            kept.append(line)
    if kept and kept[-1] != "":
        kept.append("")
    return kept


def write_svg(results, path, med):
    """tasks/s against sessions, 64 B echo, 32 in flight, one line per worker."""
    points = {}
    for worker in ("uring", "uring-1t", "epoll", "blocking"):
        for sessions in (1, 16, 256):
            value = med(worker, (sessions, 64, "echo", 32), "tasks_per_sec")
            if value:
                points.setdefault(worker, []).append((sessions, value))
    top = max((v for pts in points.values() for _, v in pts), default=1)
    width, height, pad = 640, 400, 60
    xs = {1: pad, 16: (width + pad) // 2 - 20, 256: width - pad}
    def y(v):
        return height - pad - (height - 2 * pad) * v / top
    colors = {"uring": "#d62728", "uring-1t": "#ff7f0e", "epoll": "#1f77b4", "blocking": "#7f7f7f"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">tasks/s against sessions (64 B echo, 32 in flight)</text>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>']
    for s, x in xs.items():
        svg.append(f'<text x="{x}" y="{height - pad + 18}" text-anchor="middle">{s}</text>')
    svg.append(f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">sessions</text>')
    for i in range(5):
        v = top * i / 4
        svg.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v / 1e6:.1f}M</text>')
        svg.append(f'<line x1="{pad}" y1="{y(v)}" x2="{width - pad}" y2="{y(v)}" stroke="#eee"/>')
    for i, (worker, pts) in enumerate(points.items()):
        path_d = " ".join(f"{'M' if j == 0 else 'L'} {xs[s]} {y(v):.1f}" for j, (s, v) in enumerate(pts))
        svg.append(f'<path d="{path_d}" fill="none" stroke="{colors[worker]}" stroke-width="2.5"/>')
        for s, v in pts:
            svg.append(f'<circle cx="{xs[s]}" cy="{y(v):.1f}" r="4" fill="{colors[worker]}"/>')
        svg.append(f'<text x="{width - pad - 90}" y="{pad + 18 * i}" fill="{colors[worker]}">{worker}</text>')
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg))


if __name__ == "__main__":
    main()
