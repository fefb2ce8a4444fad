#!/usr/bin/env bash
# What the limits cost: the hello-world load with and without the CPU
# watchdog, and how long a killed isolate takes to be replaced (the latency of
# the first request after a kill, next to a warm request).
#
#   bash benches/limits.sh [seconds=10] [connections=64]
. "$(dirname "$0")/common.sh"
SECS=${1:-10}
CONNS=${2:-64}
HELLO='{"name":"hello","code":"export function handler() { return new Response(\"Hello, world!\"); }","trigger":{"type":"http","config":{"auth":"none"}}}'

machine
for watchdog in true false; do
  start_churn CHURN_WATCHDOG=$watchdog
  deploy bench functions "$HELLO"
  curl -sf "$BASE/v1/bench/fn/hello" >/dev/null
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$BASE/v1/bench/fn/hello" >"$BENCH_WORK/w.txt"
  wrk_summary "hello, watchdog=$watchdog" "$BENCH_WORK/w.txt"
  stop_churn
done

start_churn
deploy bench functions '{"name":"spin","cpuLimitMs":20,"code":"export function handler(req: Request) { if (new URL(req.url).searchParams.has(\"spin\")) { while (true) {} } return new Response(\"ok\"); }","trigger":{"type":"http","config":{"auth":"none"}}}'
curl -sf "$BASE/v1/bench/fn/spin" >/dev/null
python3 - "$BASE" <<'PY'
import http.client, statistics, sys, time, urllib.parse
base = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(base.hostname, base.port)
def get(path):
    t = time.perf_counter(); c.request("GET", path); r = c.getresponse(); r.read()
    return r.status, (time.perf_counter() - t) * 1000
warm, replaced = [], []
for _ in range(100):
    s, ms = get("/v1/bench/fn/spin"); assert s == 200; warm.append(ms)
    s, _ = get("/v1/bench/fn/spin?spin"); assert s == 546, s
    s, ms = get("/v1/bench/fn/spin"); assert s == 200; replaced.append(ms)
print(f"warm request: median {statistics.median(warm):.2f} ms; first request after a kill "
      f"(new isolate from the snapshot + module load): median {statistics.median(replaced):.2f} ms, "
      f"p99 {sorted(replaced)[98]:.2f} ms (100 kills, cpuLimitMs 20)")
PY
