#!/usr/bin/env bash
# Soak: N minutes of mixed traffic against one agent, the manager (loadgen)
# restarted every minute, the agent's RSS and open descriptors sampled every
# second into a CSV. Ends with a summary: RSS and fds flat, zero lost.
#   scripts/soak.sh [minutes] [runtime] [rate] [csv]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
runtime=${2:-uring}
rate=${3:-20000}
csv=${4:-soak.csv}
cargo build --release --workspace -q
bin=target/release
dir=$(mktemp -d)
sock="$dir/manager.sock"
"$bin/ringworker" run --manager "unix://$sock" --runtime "$runtime" --sessions 8 \
  --reconnect-min 50 --reconnect-max 500 --metrics-addr off 2> "$dir/agent.log" &
agent=$!
cleanup() { kill "$agent" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

echo "t_s,rss_kib,fds,manager_run" > "$csv"
start=$SECONDS
end=$((start + minutes * 60))
run=0
sampler() {
  while kill -0 "$agent" 2>/dev/null && [ $SECONDS -lt $end ]; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
    fds=$(ls "/proc/$agent/fd" | wc -l)
    echo "$((SECONDS - start)),$rss,$fds,$(cat "$dir/run" 2>/dev/null || echo 0)" >> "$csv"
    sleep 1
  done
}
sampler &
sampler_pid=$!
ok=0; lost=0; wrong=0; mismatches=0
while [ $((SECONDS + 10)) -lt $end ]; do
  run=$((run + 1)); echo "$run" > "$dir/run"
  left=$((end - SECONDS - 5)); dur=$(( left < 55 ? left : 55 ))
  "$bin/ringworker-loadgen" --listen "unix://$sock" --sessions 8 \
    --handler echo:6,crc32c:2,sha256:1,sleep:1 --payload 1..4096 --sleep-ms 1..10 --rate "$rate" \
    --duration "$dur" --json "$dir/run-$run.json" > /dev/null 2>&1 || true
  read -r o l w m < <(python3 -c "import json;r=json.load(open('$dir/run-$run.json'));print(r['tasks_ok'],r['tasks_lost'],r['tasks_wrong'],r['accounting_mismatches'])")
  ok=$((ok + o)); lost=$((lost + l)); wrong=$((wrong + w)); mismatches=$((mismatches + m))
  echo "manager run $run: ok $o lost $l wrong $w accounting mismatches $m"
done
wait "$sampler_pid" || true
python3 - "$csv" "$ok" "$lost" "$wrong" "$mismatches" "$run" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rss = [int(r["rss_kib"]) for r in rows]
fds = [int(r["fds"]) for r in rows]
first_min = [int(r["rss_kib"]) for r in rows if 60 <= int(r["t_s"]) < 120] or rss
last_min = [int(r["rss_kib"]) for r in rows[-60:]]
print(f"samples {len(rows)}; manager runs {sys.argv[6]}")
print(f"RSS KiB: 2nd minute max {max(first_min)}, last minute max {max(last_min)}, overall max {max(rss)}")
print(f"fds: min {min(fds)}, max {max(fds)}")
print(f"tasks ok {sys.argv[2]}, lost {sys.argv[3]}, wrong {sys.argv[4]}, accounting mismatches {sys.argv[5]}")
PY
