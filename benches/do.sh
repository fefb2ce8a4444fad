#!/usr/bin/env bash
# Durable Object benchmarks: a counter with durable writes (every response
# waits for its write to be on disk), first one hot instance, then requests
# spread over 1,000 instances; then the memory of 100,000 idle instances that
# each stored one key (evicted instances should cost only their storage).
#
#   bash benches/do.sh [seconds=10] [connections=64]
. "$(dirname "$0")/common.sh"
SECS=${1:-10}
CONNS=${2:-64}

COUNTER='export class Counter { state: any; constructor(state: any) { this.state = state; } async fetch(req: Request) { const u = new URL(req.url); if (u.pathname === "/put") { await this.state.storage.put("k", 1); return new Response("ok"); } const v = ((await this.state.storage.get("n")) ?? 0) + 1; await this.state.storage.put("n", v); return new Response(String(v)); } }'
BODY=$(python3 -c 'import json,sys; print(json.dumps({"name":"counter","code":sys.argv[1],"access_mode":"public"}))' "$COUNTER")

machine
start_churn CHURN_OBJECT_IDLE_MS=2000
deploy bench durable-objects "$BODY"
curl -sf "$BASE/v1/bench/_do/counter/hot/incr" >/dev/null
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$BASE/v1/bench/_do/counter/hot/incr" >"$BENCH_WORK/hot.txt"
wrk_summary "counter, one hot instance" "$BENCH_WORK/hot.txt"
cat >"$BENCH_WORK/spread.lua" <<'LUA'
request = function()
  return wrk.format("GET", "/v1/bench/_do/counter/i" .. math.random(1000) .. "/incr")
end
LUA
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s "$BENCH_WORK/spread.lua" "$BASE" >"$BENCH_WORK/spread.txt"
wrk_summary "counter, 1,000 instances" "$BENCH_WORK/spread.txt"
echo "(wrk -t2 -c$CONNS -d${SECS}s; every response after its write is durable)"

# 100,000 idle instances, one key each.
sleep 3
BEFORE=$(rss_mib "$CHURN_PID")
python3 - "$BASE" <<'PY'
import http.client, sys, threading, urllib.parse
base = urllib.parse.urlparse(sys.argv[1])
N, T = 100_000, 16
def worker(t):
    c = http.client.HTTPConnection(base.hostname, base.port)
    for i in range(t, N, T):
        c.request("GET", f"/v1/bench/_do/counter/m{i}/put")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
PEAK=$(rss_mib "$CHURN_PID")
sleep 8  # idle time (2 s) plus the sweeps
AFTER=$(rss_mib "$CHURN_PID")
echo "100,000 instances with one key each: RSS before ${BEFORE} MiB, right after ${PEAK} MiB, after eviction ${AFTER} MiB"
