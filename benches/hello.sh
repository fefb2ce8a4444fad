#!/usr/bin/env bash
# Load benchmark: a hello-world function on churn vs a bare Deno.serve hello
# world, one after the other on this machine, with the same wrk settings.
#
#   bash benches/hello.sh [seconds=10] [connections=64]
#
# Needs wrk (apt-get install wrk) and npm (fetches Deno from the npm registry
# as @deno/linux-x64-glibc into ~/.cache/churn-bench). Prints one summary line
# per server; paste them into BENCHMARKS.md with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
. ../shared/v8/env.sh

SECS=${1:-10}
CONNS=${2:-64}
THREADS=2
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

summary() { # name file
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1=="50%" {print $2}' "$2")
  p99=$(awk '$1=="99%" {print $2}' "$2")
  printf '%-6s %10s req/s   p50 %8s   p99 %8s   (wrk -t%s -c%s -d%ss)\n' "$1" "$rps" "$p50" "$p99" "$THREADS" "$CONNS" "$SECS"
}

# churn
CHURN_WORKERS=${CHURN_WORKERS:-0} ./target/release/churn serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/churn.log" 2>&1 &
for _ in $(seq 100); do grep -q "listening on" "$work/churn.log" && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$work/churn.log")
key=$(sed -n 's/.*store it now): //p' "$work/churn.log")
curl -sf -X POST "$base/v1/bench/functions" -H "authorization: Bearer $key" \
  -H 'content-type: application/json' \
  -d '{"name":"hello","code":"export function handler() { return new Response(\"Hello, world!\"); }","trigger":{"type":"http","config":{"auth":"none"}}}' >/dev/null
curl -sf "$base/v1/bench/fn/hello" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$base/v1/bench/fn/hello" >"$work/churn.txt"
kill %1; wait %1 2>/dev/null || true

# Deno.serve
deno_dir=${HOME}/.cache/churn-bench
deno=$deno_dir/node_modules/@deno/linux-x64-glibc/deno
if [ ! -x "$deno" ]; then
  mkdir -p "$deno_dir"
  (cd "$deno_dir" && npm install --no-save --silent @deno/linux-x64-glibc@2)
fi
cat >"$work/hello.ts" <<'TS'
Deno.serve({ hostname: "127.0.0.1", port: 18999, onListen() {} }, () => new Response("Hello, world!"));
TS
"$deno" run --allow-net "$work/hello.ts" &
for _ in $(seq 100); do curl -sf http://127.0.0.1:18999/ >/dev/null 2>&1 && break; sleep 0.1; done
wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency http://127.0.0.1:18999/ >"$work/deno.txt"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr); deno $("$deno" --version | head -1 | cut -d' ' -f2)"
summary churn "$work/churn.txt"
summary deno "$work/deno.txt"
