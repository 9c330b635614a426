#!/usr/bin/env bash
# Persistence benchmarks on loopback: heartbeat throughput with and without
# the store (same run, alternating), register and task-submit acks/s per
# --sync policy, and recovery time for 100k workers + 100k queued tasks.
# Bounded: about 3 minutes.
# Usage: bash benches/persistence/run.sh [target/release/coordinator]
set -euo pipefail
cd "$(dirname "$0")"
BIN=${1:-../../target/release/coordinator}
DUR=${DUR:-8s}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1000}
TMP=$(mktemp -d /tmp/coord-bench-XXXX)
PORT=${PORT:-18601}
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

start() { # args: extra flags
  "$BIN" --host 127.0.0.1 --port "$PORT" --shards 2 --no-pin --log-level warn "$@" >/dev/null 2>"$TMP/err" &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.05; done
  echo "server did not start"; cat "$TMP/err"; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
populate() {
  for i in $(seq 0 $((WORKERS - 1))); do
    printf '{"worker_id":"bench-%d","tunnel_url":"http://b%d:8000","capabilities":{"cpu_cores":8,"ram":"16GB"}}\n' "$i" "$i"
  done | while read -r body; do
    curl -sf -o /dev/null -XPOST "http://127.0.0.1:$PORT/api/worker/register" -H 'Content-Type: application/json' -d "$body"
  done
}
rps() { grep -E "Requests/sec" | awk '{print $2}'; }

echo "== machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
ROUNDS=${ROUNDS:-3}
SECTIONS=${SECTIONS:-heartbeat register submit recovery}
if [[ " $SECTIONS " == *" heartbeat "* ]]; then
echo "== heartbeat throughput, $WORKERS workers, wrk -t1 -c$CONNS -d$DUR, 2 shards, alternating"
for round in $(seq "$ROUNDS"); do
  for mode in memory full; do
    if [ "$mode" = memory ]; then start --in-memory; else rm -f "$TMP"/hb.db*; start --db "$TMP/hb.db" --sync full; fi
    populate
    out=$(WORKERS=$WORKERS wrk -t1 -c"$CONNS" -d"$DUR" --latency -s heartbeat.lua "http://127.0.0.1:$PORT")
    echo "round $round $mode: $(echo "$out" | rps) req/s, p99 $(echo "$out" | awk '/ 99%/{print $2}'), non-2xx: $(echo "$out" | grep -c 'Non-2xx' || true)"
    stop
  done
done
fi

if [[ " $SECTIONS " == *" register "* ]]; then
echo "== register acks/s (every request a new worker), wrk -t1 -c$CONNS -d$DUR"
for mode in memory full normal off; do
  if [ "$mode" = memory ]; then start --in-memory; else rm -f "$TMP"/reg.db*; start --db "$TMP/reg.db" --sync "$mode"; fi
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency -s register.lua "http://127.0.0.1:$PORT")
  n=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["total"])')
  batch=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^coordinator_store_batch_size_sum/{s=$2} /^coordinator_store_batch_size_count/{c=$2} END{if (c>0) printf "%.1f", s/c; else print "-"}')
  commit=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^coordinator_store_commit_duration_seconds_sum/{s=$2} /^coordinator_store_commit_duration_seconds_count/{c=$2} END{if (c>0) printf "%.2f ms", 1000*s/c; else print "-"}')
  echo "$mode: $(echo "$out" | rps) acks/s, p50 $(echo "$out" | awk '/ 50%/{print $2}'), p99 $(echo "$out" | awk '/ 99%/{print $2}'), workers registered $n, mean ops per commit $batch, mean commit $commit"
  stop
done
fi

if [[ " $SECTIONS " == *" submit "* ]]; then
echo "== task submit acks/s (every request a new task, 8 service queues), wrk -t1 -c$CONNS -d$DUR"
for mode in memory full normal; do
  if [ "$mode" = memory ]; then start --in-memory; else rm -f "$TMP"/sub.db*; start --db "$TMP/sub.db" --sync "$mode"; fi
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency -s submit.lua "http://127.0.0.1:$PORT")
  n=$(curl -s "http://127.0.0.1:$PORT/api/admin/tasks?limit=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["queued"])')
  batch=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^coordinator_store_batch_size_sum/{s=$2} /^coordinator_store_batch_size_count/{c=$2} END{if (c>0) printf "%.1f", s/c; else print "-"}')
  commit=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^coordinator_store_commit_duration_seconds_sum/{s=$2} /^coordinator_store_commit_duration_seconds_count/{c=$2} END{if (c>0) printf "%.2f ms", 1000*s/c; else print "-"}')
  echo "$mode: $(echo "$out" | rps) acks/s, p50 $(echo "$out" | awk '/ 50%/{print $2}'), p99 $(echo "$out" | awk '/ 99%/{print $2}'), tasks queued $n, mean ops per commit $batch, mean commit $commit, non-2xx: $(echo "$out" | grep -c 'Non-2xx' || true)"
  stop
done
fi

if [[ " $SECTIONS " == *" recovery "* ]]; then
echo "== recovery: 100k workers + 100k queued tasks"
rm -f "$TMP"/rec.db*
start --db "$TMP/rec.db"
curl -sf -o /dev/null -XPOST "http://127.0.0.1:$PORT/api/worker/register" -H 'Content-Type: application/json' \
  -d '{"worker_id":"seed","tunnel_url":"http://seed:8000","capabilities":{"cpu_cores":8,"ram":"16GB","has_gpu":true,"gpu_type":"A100","gpu_memory":"40GB"}}'
# One real queued task per service; the copies keep each task's queue hash
# in their ids (t-<queue hash>-<n>), so every copy routes like a real one.
for svc in $(seq 0 7); do
  curl -sf -o /dev/null -XPOST "http://127.0.0.1:$PORT/api/tasks" -H 'Content-Type: application/json' \
    -d "{\"type\":\"embed\",\"service\":\"svc-b$svc\",\"payload\":{\"text\":\"a paragraph to embed, about this long\"}}"
done
stop
python3 - "$TMP/rec.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
rec, hb, st = db.execute("SELECT record, last_heartbeat_us, state FROM workers WHERE worker_id='seed'").fetchone()
seeds = db.execute("SELECT task_id, owner_key, body FROM tasks").fetchall()
now = int(time.time() * 1e6)
db.execute("BEGIN")
db.execute("DELETE FROM tasks")
db.executemany("INSERT INTO workers (worker_id, record, last_heartbeat_us, state) VALUES (?,?,?,?)",
    ((f"w{i:06d}", rec.replace('"seed"', f'"w{i:06d}"'), now, st) for i in range(100000)))
def tasks():
    for i in range(100000):
        task_id, owner, body = seeds[i % len(seeds)]
        new_id = f"{task_id[:19]}{i:016x}"
        yield new_id, owner, body.replace(task_id, new_id)
db.executemany("INSERT INTO tasks (task_id, owner_key, body) VALUES (?,?,?)", tasks())
db.commit()
PY
ls -la "$TMP"/rec.db* | awk '{s+=$5} END{print "database bytes:", s}'
for shards in 2 3; do
  t0=$(date +%s%N)
  "$BIN" --host 127.0.0.1 --port "$PORT" --shards "$shards" --no-pin --db "$TMP/rec.db" --log-level info >/dev/null 2>"$TMP/err" &
  PID=$!
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.01; done
  t1=$(date +%s%N)
  total=$(curl -s "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["total"])')
  queued=$(curl -s "http://127.0.0.1:$PORT/api/admin/tasks?limit=0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["queued"])')
  echo "shards $shards: start to first answer $(( (t1 - t0) / 1000000 )) ms, workers $total, queued tasks $queued; $(grep -o 'recovered state.*' "$TMP/err" | sed 's/\x1b\[[0-9;]*m//g')"
  stop
done
ls -la "$TMP"/rec.db* | awk '{s+=$5} END{print "database bytes after clean stop:", s}'
fi
