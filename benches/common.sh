# Shared by the bench scripts: build the release binary, start it on a free
# port with a fresh data directory, and read its URL and service key.
# Usage: . benches/common.sh; start_churn [ENV=VALUE ...]; ...; stop_churn
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ../shared/v8/env.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet

BENCH_WORK=$(mktemp -d)
CHURN_PID=""

start_churn() {
  rm -rf "$BENCH_WORK/data" "$BENCH_WORK/churn.log"
  env "$@" ./target/release/churn serve --listen 127.0.0.1:0 --data-dir "$BENCH_WORK/data" >"$BENCH_WORK/churn.log" 2>&1 &
  CHURN_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$BENCH_WORK/churn.log" && break; sleep 0.1; done
  BASE=$(sed -n 's/^listening on //p' "$BENCH_WORK/churn.log")
  KEY=$(sed -n 's/.*store it now): //p' "$BENCH_WORK/churn.log")
}

stop_churn() {
  kill "$CHURN_PID" 2>/dev/null || true
  wait "$CHURN_PID" 2>/dev/null || true
}

# deploy APP KIND JSON  (KIND: functions | durable-objects)
deploy() {
  curl -sf -X POST "$BASE/v1/$1/$2" -H "authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "$3" >/dev/null
}

wrk_summary() { # name file
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1=="50%" {print $2}' "$2")
  p99=$(awk '$1=="99%" {print $2}' "$2")
  printf '%-28s %10s req/s   p50 %8s   p99 %8s\n' "$1" "$rps" "$p50" "$p99"
}

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

machine() {
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr)"
}

trap 'stop_churn; rm -rf "$BENCH_WORK"' EXIT
