#!/usr/bin/env bash
# Side-by-side benchmark of uring, blocking and the epoll reference; writes
# BENCHMARKS.md and benches/scaling.svg. Needs python3; installs iperf3 and
# strace when missing. See benches/compare.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in iperf3 strace; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
exec python3 benches/compare.py "$@"
