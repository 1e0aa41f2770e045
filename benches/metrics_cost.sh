#!/usr/bin/env bash
# Cost of the metrics: agent throughput with /metrics scraped every 100 ms
# against not scraped at all, alternating runs, same machine, same build;
# plus the scrape latency at 64 sessions with every handler active.
#   benches/metrics_cost.sh [runs] [seconds]
# Scrape cost at 1,000 sessions: samples, bytes, gzip bytes and time per
# scrape, with per-session series on and off (an agent without
# --session-metrics is measured with them on only):
#   benches/metrics_cost.sh scrape [bin-dir] [sessions] [scrapes]
# bin-dir holds ringworker and ringworker-loadgen (default: a fresh release
# build of this checkout), e.g. another commit's target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = scrape ]; then
  bin=${2:-}
  sessions=${3:-1000}
  scrapes=${4:-40}
  if [ -z "$bin" ]; then
    cargo build --release --workspace -q
    bin=target/release
  fi
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  port=19465
  modes=(on)
  if "$bin/ringworker" run --help | grep -q -- --session-metrics; then modes=(on off); fi
  echo "agent: $bin/ringworker ($("$bin/ringworker" --version)), $sessions sessions, $scrapes scrapes of each kind"
  for mode in "${modes[@]}"; do
    args=(--agent-arg="--metrics-addr=127.0.0.1:$port")
    [ "$mode" = off ] && args+=(--agent-arg=--session-metrics=false)
    # A light open-loop workload, so the tasks and byte series are live.
    "$bin/ringworker-loadgen" --listen tcp://127.0.0.1:0 --spawn uring --sessions "$sessions" \
      --rate 2000 --handler echo --payload 64 --duration 30 --warmup 1 "${args[@]}" \
      >"$out/loadgen-$mode.log" 2>&1 &
    lg=$!
    python3 - "$port" "$sessions" "$scrapes" "$mode" <<'PY2'
import gzip, http.client, json, statistics, sys, time
port, sessions, scrapes, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def get(path, headers):
    # (response, body, seconds to the response head, seconds to the last byte):
    # the agent renders (and compresses) the whole answer before its first
    # byte, so the first time is the agent's cost, the second what a scraper
    # waits.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    head = time.perf_counter() - start
    body = resp.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return resp, body, head, elapsed
deadline = time.monotonic() + 90
while True:  # bounded: every session connected, or give up after 90 s
    try:
        _, body, _, _ = get("/status", {})
        if json.loads(body)["connected_sessions"] >= sessions:
            break
    except (OSError, ValueError, KeyError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"not all {sessions} sessions connected within 90 s")
    time.sleep(0.5)
time.sleep(2)
times = {"identity": ([], []), "gzip": ([], [])}
text, wire, served_gzip = b"", b"", False
for i in range(scrapes):
    # Alternate which kind goes first: the first after a pause is slower.
    for kind in (("identity", "gzip") if i % 2 == 0 else ("gzip", "identity")):
        resp, body, head, total = get("/metrics", {"Accept-Encoding": kind})
        times[kind][0].append(head * 1000)
        times[kind][1].append(total * 1000)
        if kind == "identity":
            text = body
        else:
            wire, served_gzip = body, resp.getheader("Content-Encoding") == "gzip"
    time.sleep(0.1)
samples = sum(1 for l in text.decode().splitlines() if l and not l.startswith("#"))
gz_bytes = len(wire) if served_gzip else len(gzip.compress(text, 1))
def q(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * p))]
def t(kind): h, a = times[kind]; return f"head p50 {q(h,.5):.2f} p90 {q(h,.9):.2f} ms, whole p50 {q(a,.5):.2f} p90 {q(a,.9):.2f} ms"
print(f"session_metrics={mode}: {samples} samples, {len(text):,} B, gzip {gz_bytes:,} B"
      f" ({'served' if served_gzip else 'not served; gzip -1 of the text'})")
print(f"  identity:   {t('identity')}")
print(f"  gzip asked: {t('gzip')}")
PY2
    # The loadgen ends its run (30 s) and stops the agent it spawned.
    wait "$lg" || { echo "loadgen failed:"; tail -5 "$out/loadgen-$mode.log"; }
  done
  exit 0
fi
runs=${1:-3}
secs=${2:-5}
cargo build --release --workspace -q
bin=target/release
out=$(mktemp -d)
port=19464
mix="echo:4,crc32c:2,sha256:1,sink:1"
run() { # $1 = label, $2 = scrape yes|no
  local json="$out/$1.json"
  "$bin/ringworker-loadgen" --listen tcp://127.0.0.1:0 --spawn uring --sessions 64 \
    --concurrency 16 --handler "$mix" --payload 16..1024 --duration "$secs" --warmup 1 \
    --agent-arg="--metrics-addr=127.0.0.1:$port" --json "$json" >/dev/null 2>&1 &
  local lg=$!
  if [ "$2" = yes ]; then
    # One long-lived scraper process (a fork per scrape would cost more CPU
    # than the scrape itself on a 2-core machine).
    python3 - "$port" "$secs" "$out/scrape-times" <<'PY'
import sys, time, urllib.request
port, secs, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(1)
end = time.monotonic() + secs
with open(path, "a") as out:
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            out.write(f"{time.monotonic() - start}\n")
        except OSError:
            pass
        time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))
PY
  fi
  wait $lg
  python3 -c "import json;r=json.load(open('$json'));print(f\"{r['tasks_per_sec']}/{r['agent_cpu_us_per_task']}\")"
}
no=(); yes=()
for i in $(seq 1 "$runs"); do
  no+=("$(run "no-$i" no)")
  yes+=("$(run "yes-$i" yes)")
done
python3 - "$out/scrape-times" "${no[*]}" "${yes[*]}" <<'PY'
import statistics, sys
times = sorted(float(t) * 1000 for t in open(sys.argv[1]))
no = [tuple(map(float, x.split("/"))) for x in sys.argv[2].split()]
yes = [tuple(map(float, x.split("/"))) for x in sys.argv[3].split()]
def med(rows, i): return statistics.median(r[i] for r in rows)
print(f"not scraped:        median {med(no,0):,.0f} tasks/s, agent {med(no,1):.3f} us CPU/task  runs {[round(r[0]) for r in no]}")
print(f"scraped every 100ms: median {med(yes,0):,.0f} tasks/s, agent {med(yes,1):.3f} us CPU/task  runs {[round(r[0]) for r in yes]}")
print(f"throughput cost: {100 * (1 - med(yes,0) / med(no,0)):+.2f} %   agent CPU per task: {100 * (med(yes,1) / med(no,1) - 1):+.2f} %")
print(f"scrape latency (64 sessions): p50 {times[len(times)//2]:.2f} ms  p99 {times[int(len(times)*0.99)]:.2f} ms  over {len(times)} scrapes")
PY
rm -rf "$out"
