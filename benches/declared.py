#!/usr/bin/env python3
"""Declared handlers against the built-in echo, side by side in one run.

Rows (64 B payloads, every result checked byte for byte with
`--handler-as NAME=echo`):

- `echo`: the built-in, the ceiling;
- `pool`: a `pool` handler running `examples/pool_worker.rs` (release build),
  two processes per event loop;
- `exec`: an `exec` handler running `cat`, one process per task.

Each row runs on the uring runtime (and the blocking runtime with
`--blocking`), the configurations alternating run by run, and reports the
median tasks/s, the agent's CPU per task (user and kernel time of the agent
process alone) and the pool workers' CPU per task (read from /proc for the
agent's children over the run). Needs the release binaries:

    cargo build --release -p ringworker -p ringworker-loadgen --bins --examples
    python3 benches/declared.py [--repeats 3] [--seconds 5] [--sessions 64] [--concurrency 32]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
TICKS = os.sysconf("SC_CLK_TCK")


def config(path, pool_processes, exec_concurrency):
    worker = os.path.join(BIN, "examples", "pool_worker")
    cat = shutil.which("cat") or "/bin/cat"
    with open(path, "w") as f:
        f.write(
            f"""[handlers.pool-echo]
mode = "pool"
command = ["{worker}"]
processes = {pool_processes}
in_flight_per_process = 64
timeout = "10s"

[handlers.exec-cat]
mode = "exec"
command = ["{cat}"]
concurrency = {exec_concurrency}
timeout = "10s"
"""
        )


def processes():
    """(pid, ppid, comm, utime + stime in seconds split as (user, kernel)) of every process."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        comm = head.split("(", 1)[1]
        yield int(pid), int(fields[1]), comm, (int(fields[11]) / TICKS, int(fields[12]) / TICKS)


def children_cpu(parent):
    """CPU seconds (user, kernel) of the live children of `parent`."""
    user = kernel = 0.0
    for _, ppid, _, (u, k) in processes():
        if ppid == parent:
            user += u
            kernel += k
    return user, kernel


def agent_pid(loadgen_pid):
    for pid, ppid, comm, _ in processes():
        if ppid == loadgen_pid and comm == "ringworker":
            return pid
    return None


def run(runtime, handler, cfg, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = f.name
    cmd = [
        os.path.join(BIN, "ringworker-loadgen"), "--listen", "tcp://127.0.0.1:0",
        "--spawn", runtime, "--agent-bin", os.path.join(BIN, "ringworker"),
        "--agent-arg=--config=" + cfg,
        "--sessions", str(args.sessions), "--concurrency", str(args.concurrency),
        "--handler", handler, "--payload", "64",
        "--duration", str(args.seconds), "--warmup", str(args.warmup),
        "--json", report, "--connect-timeout", "60",
    ]
    if handler != "echo":
        cmd += ["--handler-as", f"{handler}=echo"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The workers' CPU over the measured window: sampled at its start and end.
    samples = {}

    def sample():
        deadline = time.monotonic() + 60
        agent = None
        while agent is None and time.monotonic() < deadline and proc.poll() is None:
            agent = agent_pid(proc.pid)
            time.sleep(0.05)
        if agent is None:
            return
        time.sleep(args.warmup + 0.5)
        samples["start"] = (time.monotonic(), children_cpu(agent))
        time.sleep(max(args.seconds - 1.0, 0.5))
        samples["end"] = (time.monotonic(), children_cpu(agent))

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        proc.wait(timeout=args.seconds + args.warmup + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.join()
    try:
        with open(report) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    finally:
        os.unlink(report)
    tasks_per_s = data.get("tasks_per_sec") or 0
    data["children_us_per_task"] = None
    if "start" in samples and "end" in samples and tasks_per_s:
        (t0, (u0, k0)), (t1, (u1, k1)) = samples["start"], samples["end"]
        cpu = (u1 - u0) + (k1 - k0)
        data["children_us_per_task"] = cpu / ((t1 - t0) * tasks_per_s) * 1e6
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool-processes", type=int, default=4)
    parser.add_argument("--exec-concurrency", type=int, default=8)
    parser.add_argument("--blocking", action="store_true", help="add the blocking runtime's rows")
    parser.add_argument("--save", help="write every run's report to this JSON file")
    args = parser.parse_args()
    for needed in ["ringworker", "ringworker-loadgen", os.path.join("examples", "pool_worker")]:
        if not os.path.exists(os.path.join(BIN, needed)):
            sys.exit(f"missing target/release/{needed}: cargo build --release -p ringworker -p ringworker-loadgen --bins --examples")
    cfg = os.path.join(tempfile.mkdtemp(prefix="declared-"), "handlers.toml")
    config(cfg, args.pool_processes, args.exec_concurrency)
    runtimes = ["uring"] + (["blocking"] if args.blocking else [])
    rows = [(rt, h) for rt in runtimes for h in ["echo", "pool-echo", "exec-cat"]]
    runs = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row in rows:
            data = run(row[0], row[1], cfg, args)
            if data is not None:
                runs[row].append(data)
    if args.save:
        with open(args.save, "w") as f:
            json.dump({f"{rt}/{h}": r for (rt, h), r in runs.items()}, f, indent=1)

    def med(row, key):
        values = [r[key] for r in runs[row] if r.get(key) is not None]
        return statistics.median(values) if values else None

    print(f"{args.sessions} sessions x {args.concurrency} in flight, 64 B, {args.repeats} runs of "
          f"{args.seconds:g} s, medians; pool: {args.pool_processes} processes, exec: concurrency "
          f"{args.exec_concurrency}\n")
    print("| runtime | handler | tasks/s | vs echo | agent user µs/task | agent kernel µs/task "
          "| agent total µs/task | workers µs/task | failed or wrong |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rt, h in rows:
        tps = med((rt, h), "tasks_per_sec")
        base = med((rt, "echo"), "tasks_per_sec")
        bad = sum(r.get("tasks_failed", 0) + r.get("tasks_wrong", 0) + r.get("tasks_lost", 0) for r in runs[(rt, h)])

        def f(v, digits=3):
            return "n/a" if v is None else f"{v:,.{digits}f}"
        ratio = f"{tps / base:.2f}×" if tps and base else "n/a"
        print(f"| {rt} | {h} | {f(tps, 0)} | {ratio} | {f(med((rt, h), 'agent_cpu_user_us_per_task'))} "
              f"| {f(med((rt, h), 'agent_cpu_sys_us_per_task'))} | {f(med((rt, h), 'agent_cpu_us_per_task'))} "
              f"| {f(med((rt, h), 'children_us_per_task'))} | {bad} |")


if __name__ == "__main__":
    main()
