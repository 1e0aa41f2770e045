#!/usr/bin/env bash
# Cost of the metrics: agent throughput with /metrics scraped every 100 ms
# against not scraped at all, alternating runs, same machine, same build;
# plus the scrape latency at 64 sessions with every handler active.
#   benches/metrics_cost.sh [runs] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
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
