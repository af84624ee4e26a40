#!/usr/bin/env bash
# Benchmarks Partyline as a cluster of real processes on loopback and, in the
# same run, `partyline dev` for comparison:
#
#   nats-server (JetStream) + 2 coordinators + 3 room nodes (one shared file
#   store) + 2 gateways
#
#   a. S1 (100 rooms × 10 clients × 1 update/s) through both gateways, CPU and
#      RSS summed over the 7 partyline processes (nats-server not counted),
#      then S1 against `partyline dev`, ROUNDS times alternating; prints
#      every row, each round's ratios and the median ratio (the verdict).
#   b. Failover: a fresh S1-shaped load; KILL_AFTER seconds into it one room
#      node is SIGKILLed; for the rooms it owned, reports the time from the
#      kill to each room's first delivery after it (from `--room-gaps`).
#
#   bench/cluster.sh                      # both, ~4 minutes
#   bench/cluster.sh s1                   # only a. (or: failover)
#   DURATION=10s FAILOVER_DURATION=20s bench/cluster.sh
#
# Env: DURATION (S1 sending time per round and server, 20s), ROUNDS (3),
# SPREAD (room: all of a room's clients on one gateway, as the path-hashing
# proxy of docs/operations.md "Load balancing" and deploy/compose route
# them; client: a room's clients alternate gateways, as a round-robin
# balancer would), FAILOVER_DURATION (30s), KILL_AFTER
# (seconds of sending before the kill, 10), VICTIM (node id to kill, node-2),
# REDIS (1: the room nodes keep their update logs in a redis-server of the
# script's, snapshots in the file store, as in production; 0: the file
# store alone, the default), LINK_SECRET (1: gateways and room nodes share
# a gRPC link secret file, as every cluster must, the default; 0: they run
# with --insecure-no-grpc-secret, to measure what the check costs; none:
# no flag, for a binary from before the secret),
# PARTYLINE_LOG (log level of every server process, info), NATS_SERVER_BIN,
# OUT (where JSON lines and logs go; default target/bench/cluster-<time>/).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20s}
ROUNDS=${ROUNDS:-3}
FAILOVER_DURATION=${FAILOVER_DURATION:-30s}
KILL_AFTER=${KILL_AFTER:-10}
SPREAD=${SPREAD:-room}
REDIS=${REDIS:-0}
LINK_SECRET=${LINK_SECRET:-1}
VICTIM=${VICTIM:-node-2}
export PARTYLINE_LOG=${PARTYLINE_LOG:-info}
# Worker threads of the cluster's processes and of dev, each left to the
# binary's default (one per core) when unset.
cluster_env=(env)
[ -n "${CLUSTER_WORKER_THREADS:-}" ] && cluster_env+=(PARTYLINE_WORKER_THREADS="$CLUSTER_WORKER_THREADS")
dev_env=(env)
[ -n "${DEV_WORKER_THREADS:-}" ] && dev_env+=(PARTYLINE_WORKER_THREADS="$DEV_WORKER_THREADS")
run_s1=0
run_failover=0
[ $# -eq 0 ] && set -- s1 failover
for part in "$@"; do
  case $part in
    s1) run_s1=1 ;;
    failover) run_failover=1 ;;
    *) echo "usage: $0 [s1] [failover]" >&2; exit 2 ;;
  esac
done

# shellcheck source=bench/common.sh
. bench/common.sh
OUT=${OUT:-$bin_dir/bench/cluster-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

nats_bin=${NATS_SERVER_BIN:-}
if [ -z "$nats_bin" ]; then
  nats_bin=$(command -v nats-server || true)
fi
if [ -z "$nats_bin" ] && [ -x "$HOME/.cache/partyline/venv/bin/nats-server" ]; then
  nats_bin="$HOME/.cache/partyline/venv/bin/nats-server"
fi
[ -n "$nats_bin" ] || { echo "no nats-server: set NATS_SERVER_BIN or put it on PATH" >&2; exit 1; }

log() { echo "[cluster.sh $(date +%T)] $*" >&2; }
now_ms() { date +%s%3N; }
cpu_ticks() { sed -E 's/.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # utime + stime

# Every process this script starts, by name; all are stopped on exit.
declare -A pid_of=()
started=()
start() { # NAME CMD... ; logs in $OUT/NAME.out and $OUT/NAME.err
  local name=$1
  shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  pid_of[$name]=$!
  started+=("$name")
}
cleanup() {
  local name pid
  for name in "${started[@]}"; do
    pid=${pid_of[$name]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Room nodes drain on SIGTERM; nothing here needs that: 3 s, then SIGKILL.
  for _ in $(seq 30); do
    local alive=0
    for name in "${started[@]}"; do
      kill -0 "${pid_of[$name]}" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for name in "${started[@]}"; do
    kill -KILL "${pid_of[$name]}" 2>/dev/null || true
    wait "${pid_of[$name]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_line() { # FILE REGEX SECONDS NAME -> prints the first matching line
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do
    if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    if [ -n "${4:-}" ] && ! kill -0 "${pid_of[$4]}" 2>/dev/null; then
      log "$4 exited before it was ready; its stderr:"
      tail -n 20 "$OUT/$4.err" >&2
      return 1
    fi
    sleep 0.1
  done
  log "timed out waiting for /$2/ in $1"
  [ -n "${4:-}" ] && tail -n 20 "$OUT/$4.err" >&2
  return 1
}

admin() { "$partyline" admin --nats "$nats_url" "$@" 2>>"$OUT/admin.err"; }
locate_rooms() { # PREFIX -> $OUT/failover-locate.jsonl
  seq 0 99 | xargs -P 4 -I{} "$partyline" admin --nats "$nats_url" locate "$1-{}" --json \
    >"$OUT/failover-locate.jsonl" 2>>"$OUT/admin.err"
}

# ---- the cluster ------------------------------------------------------------
nats_port=$(free_port)
nats_url="nats://127.0.0.1:$nats_port"
store="$OUT/store"
mkdir -p "$store" "$OUT/nats"
log "starting nats-server ($nats_bin) on $nats_url; logs and results in $OUT"
start nats "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$OUT/nats"
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.1
done
case "$LINK_SECRET" in
  1)
    # A throwaway secret for this run's loopback cluster.
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$OUT/grpc-secret"
    link_args=(--grpc-secret-file "$OUT/grpc-secret")
    ;;
  0) link_args=(--insecure-no-grpc-secret) ;;
  *) link_args=() ;; # none: a binary from before the link secret
esac
for c in c1 c2; do
  start "coordinator-$c" "${cluster_env[@]}" "$partyline" coordinator --nats "$nats_url" --coordinator-id "$c" \
    "${link_args[@]}"
done
for c in c1 c2; do
  wait_for_line "$OUT/coordinator-$c.out" "partyline coordinator .* started" 30 "coordinator-$c" >/dev/null
done
node_log_args=()
if [ "$REDIS" = 1 ]; then
  redis_port=$(free_port)
  mkdir -p "$OUT/redis"
  log "starting redis-server on 127.0.0.1:$redis_port (AOF, fsync every second)"
  start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly yes --dir "$OUT/redis"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
    sleep 0.1
  done
  node_log_args=(--redis "redis://127.0.0.1:$redis_port/0")
fi
for n in 1 2 3; do
  start "node-$n" "${cluster_env[@]}" "$partyline" room-node --nats "$nats_url" --node-id "node-$n" \
    --grpc-listen 127.0.0.1:0 --store "file://$store" "${node_log_args[@]}" "${link_args[@]}"
done
for n in 1 2 3; do
  wait_for_line "$OUT/node-$n.out" "serving grpc on" 30 "node-$n" >/dev/null
done
log "waiting for the slot map to list node-1, node-2 and node-3"
deadline=$((SECONDS + 30))
until admin slots --json | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)
except ValueError:
    sys.exit(1)  # no map yet
ids = {n["id"] for n in m["nodes"]}
owners = set(m["owners"])
sys.exit(0 if ids == {"node-1", "node-2", "node-3"} and owners == ids else 1)'; do
  if [ $SECONDS -ge $deadline ]; then
    log "the slot map never listed all three nodes:"
    admin slots --json >&2 || true
    exit 1
  fi
  sleep 0.3
done
admin slots --json >"$OUT/slots-before.json"
gateway_urls=()
for g in 1 2; do
  start "gateway-$g" "${cluster_env[@]}" "$partyline" gateway --nats "$nats_url" --listen 127.0.0.1:0 --insecure-no-auth \
    "${link_args[@]}"
done
for g in 1 2; do
  line=$(wait_for_line "$OUT/gateway-$g.out" "partyline gateway listening on ws://" 30 "gateway-$g")
  gateway_urls+=("${line##*listening on }/{room}")
done
cluster_names=(coordinator-c1 coordinator-c2 node-1 node-2 node-3 gateway-1 gateway-2)
cluster_pids=()
for name in "${cluster_names[@]}"; do cluster_pids+=("${pid_of[$name]}"); done
log "cluster up: epoch $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["epoch"])' "$OUT/slots-before.json"), gateways ${gateway_urls[*]}"
{
  echo "nats-server pid ${pid_of[nats]} (not measured)"
  for name in "${cluster_names[@]}"; do echo "$name pid ${pid_of[$name]}"; done
} | tee "$OUT/pids.txt" >&2

url_args=(--spread "$SPREAD")
for url in "${gateway_urls[@]}"; do url_args+=(--url "$url"); done
pid_args=()
for pid in "${cluster_pids[@]}"; do pid_args+=(--server-pid "$pid"); done

# ---- a. S1 on the cluster and on dev ----------------------------------------
# Rounds alternate cluster and dev (fresh rooms each round), so a slow
# minute on a shared machine hits both sides of a ratio alike; the verdict
# uses the median round.
if [ $run_s1 = 1 ]; then
dev_port=$(free_port)
mkdir -p "$OUT/dev-data"
start dev "${dev_env[@]}" "$partyline" dev --listen "127.0.0.1:$dev_port" --data-dir "$OUT/dev-data"
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$dev_port") 2>/dev/null && break
  sleep 0.1
done
echo "dev pid ${pid_of[dev]}" >>"$OUT/pids.txt"
s1_round() { # ROUND NAME DESCRIPTION BENCH-ARGS... -> $OUT/s1-NAME-ROUND.{json,txt}
  local round=$1 name=$2 what=$3
  shift 3
  log "S1 round $round/$ROUNDS on $what; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$partyline" bench "$@" --rooms 100 --clients 10 --rate 1 --duration "$DURATION" \
    --room-prefix "s1-r$round" >"$OUT/s1-$name-$round.json" 2>"$OUT/s1-$name-$round.txt" || true
  grep -v ' INFO ' "$OUT/s1-$name-$round.txt" | tail -n 12 >&2
}
nats_ticks=$(cpu_ticks "${pid_of[nats]}")
for round in $(seq "$ROUNDS"); do
  s1_round "$round" cluster "the cluster (2 gateways; cpu/rss summed over the 7 partyline processes, nats-server excluded)" \
    "${url_args[@]}" "${pid_args[@]}"
  s1_round "$round" dev "partyline dev (one process)" \
    --url "ws://127.0.0.1:$dev_port/{room}" --server-pid "${pid_of[dev]}"
done
echo "$(($(cpu_ticks "${pid_of[nats]}") - nats_ticks))" >"$OUT/s1-nats-ticks"
kill -TERM "${pid_of[dev]}" 2>/dev/null || true
wait "${pid_of[dev]}" 2>/dev/null || true
fi

# ---- b. failover ------------------------------------------------------------
kill_ms=0
map_ms=""
epoch_before=""
if [ $run_failover = 1 ]; then
victim_pid=${pid_of[$VICTIM]:?"VICTIM must be node-1, node-2 or node-3"}
prefix="fo-$(date +%s)"
log "failover: locating rooms $prefix-0..99"
epoch_before=$(admin slots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
# The map does not change while no node joins or dies, so the rooms are
# located before the load starts (no locate processes during the run); the
# epoch is checked again just before the kill.
locate_rooms "$prefix"
log "failover: load (${FAILOVER_DURATION} of 100 rooms × 10 clients × 1 update/s, --room-gaps); $VICTIM (pid $victim_pid) is killed ${KILL_AFTER}s into it"
# (its JSON line lands in failover.out, its table and log in failover.err)
start failover env PARTYLINE_LOG=info "$partyline" bench "${url_args[@]}" \
  --rooms 100 --clients 10 --rate 1 --duration "$FAILOVER_DURATION" \
  --room-prefix "$prefix" --room-gaps
wait_for_line "$OUT/failover.err" "step starting" 120 failover >/dev/null
sleep "$KILL_AFTER"
epoch_at_kill=$(admin slots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
if [ "$epoch_at_kill" != "$epoch_before" ]; then
  log "the slot map changed before the kill (epoch $epoch_before -> $epoch_at_kill): locating again"
  locate_rooms "$prefix"
fi
kill_ms=$(now_ms)
kill -KILL "$victim_pid"
{ wait "$victim_pid"; } 2>/dev/null || true
log "SIGKILL $VICTIM (pid $victim_pid) at $kill_ms"
# When the coordinators publish the map without the victim (polled, 4/s).
map_ms=""
deadline=$((SECONDS + 20))
while [ $SECONDS -lt $deadline ]; do
  if admin slots --json | python3 -c '
import json, sys
m = json.load(sys.stdin)
sys.exit(0 if sys.argv[1] not in m["owners"] else 1)' "$VICTIM"; then
    map_ms=$(now_ms)
    break
  fi
  sleep 0.25
done
admin slots --json >"$OUT/slots-after.json" || true
wait "${pid_of[failover]}" || true
grep -v ' INFO ' "$OUT/failover.err" | tail -n 14 >&2
fi

# ---- results ----------------------------------------------------------------
python3 - "$OUT" "$VICTIM" "$kill_ms" "${map_ms:-}" "$epoch_before" "$run_s1" "$run_failover" "$ROUNDS" <<'PY'
import json, math, os, statistics, sys

out, victim, epoch_before = sys.argv[1], sys.argv[2], sys.argv[5]
rounds = int(sys.argv[8])
kill_ms, map_ms = int(sys.argv[3]), sys.argv[4]
run_s1, run_failover = sys.argv[6] == "1", sys.argv[7] == "1"
# Deliveries this soon after the kill may be ones the dying node sent just
# before it died (in flight on loopback): they do not end the outage.
IN_FLIGHT_MS = 1000


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": f"{name}: {e}"}


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def pct(values, q):  # nearest rank
    values = sorted(values)
    return values[max(1, math.ceil(q * len(values))) - 1] if values else None


def process_names():
    names = {}
    try:
        for line in open(os.path.join(out, "pids.txt")):
            name, _, pid = line.split()[:3]
            names[int(pid)] = name
    except Exception:
        pass
    return names


def s1_row(r):
    step = (r.get("steps") or [{}])[-1]
    server = r.get("server") or {}
    rss = server.get("rss_bytes")
    return {
        "p50": (step.get("fanout") or {}).get("p50_ms"),
        "p99": step.get("judged_p99_ms"),
        "max": (step.get("fanout") or {}).get("max_ms"),
        "dps": step.get("delivered_per_second"),
        "cpu": server.get("cpu_seconds"),
        "cpu1k": server.get("cpu_seconds_per_1k_delivered"),
        "rss": rss / 2**20 if isinstance(rss, (int, float)) else None,
        "gap99": (step.get("gap") or {}).get("p99_ms"),
        "err": (r.get("errors") or {}).get("total"),
    }


def s1_results():
    print()
    print(f"S1: 100 rooms x 10 clients x 1 update/s, {rounds} rounds alternating cluster and dev;")
    print("    cluster = 2 gateways + 3 room nodes + 2 coordinators")
    print("    (cpu and rss summed over those 7 processes; nats-server is NOT included)")
    print(f"{'round':5} {'server':8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'deliv/s':>9} {'cpu s':>7} "
          f"{'cpu s/1k':>9} {'rss MiB':>8} {'gap99 ms':>9} {'errors':>7}")
    ratios = {"p99": [], "cpu1k": []}
    errors = []
    for n in range(1, rounds + 1):
        rows = {}
        for name in ("cluster", "dev"):
            r = load(f"s1-{name}-{n}.json")
            rows[name] = row = s1_row(r)
            if "error" in r:
                print(f"{n:<5} {name:8} {r['error']}")
                continue
            print(f"{n:<5} {name:8} {fmt(row['p50'], '8.2f')} {fmt(row['p99'], '8.2f')} {fmt(row['max'], '8.1f')} "
                  f"{fmt(row['dps'], '9.0f')} {fmt(row['cpu'], '7.2f')} {fmt(row['cpu1k'], '9.4f')} "
                  f"{fmt(row['rss'], '8.1f')} {fmt(row['gap99'], '9.1f')} {fmt(row['err'], '7d')}")
            if row["err"]:
                errors.append(f"note: S1 round {n} on {name} had {row['err']} errors (see s1-{name}-{n}.txt)")
        for key in ratios:
            a, b = rows["cluster"][key], rows["dev"][key]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                ratios[key].append(a / b)
    print()
    for label, key, target in (("p99(cluster) / p99(dev)", "p99", 1.5),
                               ("cpu-per-1k(cluster) / cpu-per-1k(dev)", "cpu1k", 1.3)):
        values = ratios[key]
        if len(values) < rounds:
            print(f"{label}: - (figures missing)  target <= {target}: FAIL")
            continue
        median = statistics.median(values)
        verdict = "PASS" if median <= target else "FAIL"
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"{label}: rounds {each}; median {median:.2f}  (target <= {target}): {verdict}")
    for line in errors:
        print(line)
    try:
        nats_s = int(open(os.path.join(out, "s1-nats-ticks")).read()) / 100
        print(f"nats-server (not in the cluster rows): {nats_s:.2f} cpu s over all S1 rounds, "
              f"dev rounds included")
    except (OSError, ValueError):
        pass
    names = process_names()
    for n in range(1, rounds + 1):
        per_pid = (load(f"s1-cluster-{n}.json").get("server") or {}).get("per_pid") or []
        if per_pid:
            print(f"round {n} cluster cpu by process: " + ", ".join(
                f"{names.get(p['pid'], p['pid'])} {fmt(p.get('cpu_seconds'), '.2f')} s" for p in per_pid))


def failover_results():
    print()
    fo = load("failover.out")
    if "error" in fo:
        print(f"failover: no bench result ({fo['error']})")
        return
    owners = {}
    with open(os.path.join(out, "failover-locate.jsonl")) as f:
        for line in f:
            if line.strip():
                loc = json.loads(line)
                owners[loc["room"]] = loc["node"]
    step = (fo.get("steps") or [{}])[-1]
    gaps = {g["room"]: g for g in step.get("room_gaps") or []}
    by_index = lambda room: int(room.rsplit("-", 1)[1])
    kill_rel = kill_ms - fo["started_unix_ms"]
    victim_rooms = sorted((r for r, n in owners.items() if n == victim), key=by_index)
    # Per victim room: kill -> first delivery after the outage = end of the
    # room's longest gap, when that gap is the outage (starts before the kill,
    # or within IN_FLIGHT_MS after it, and ends after it).
    recoveries, unclear, never = [], [], []
    for room in victim_rooms:
        g = gaps.get(room) or {}
        start, length, last = g.get("gap_started_ms"), g.get("max_gap_ms"), g.get("last_delivery_ms")
        if last is None or last <= kill_rel + IN_FLIGHT_MS:
            never.append(room)
        elif start is not None and start <= kill_rel + IN_FLIGHT_MS and start + length > kill_rel:
            recoveries.append((start + length - kill_rel, room))
        else:
            unclear.append((length, room))
    with open(os.path.join(out, "failover-rooms.tsv"), "w") as f:
        f.write(f"# SIGKILL {victim} at {kill_rel:.0f} ms after the bench's start\n")
        f.write("room\towner\tdelivery_frames\tmissing\tmax_gap_ms\tgap_started_ms\tlast_delivery_ms\n")
        for room in sorted(gaps, key=by_index):
            g = gaps[room]
            f.write("\t".join(str(v) for v in (
                room, owners.get(room), g["delivery_frames"], g["missing_deliveries"],
                g["max_gap_ms"], g["gap_started_ms"], g["last_delivery_ms"])) + "\n")

    errors = fo.get("errors") or {}
    print(f"failover: SIGKILL {victim} {kill_rel / 1000:.1f} s into the run; {len(victim_rooms)} of "
          f"{len(owners)} rooms were on it (slot map epoch {epoch_before} before the kill)")
    if map_ms:
        print(f"  slot map without {victim} first seen {(int(map_ms) - kill_ms) / 1000:.2f} s after the kill "
              f"(admin polled every 0.25 s)")
    else:
        print(f"  no slot map without {victim} seen within 20 s of the kill")
    ok = bool(recoveries) and not unclear and not never
    if recoveries:
        values = [v for v, _ in recoveries]
        worst = max(recoveries)
        ok = ok and worst[0] <= 5000
        print(f"  kill -> first delivery again, over {len(values)} rooms: p50 {pct(values, 0.5) / 1000:.2f} s, "
              f"max {worst[0] / 1000:.2f} s ({worst[1]})")
    if unclear:
        print(f"  {len(unclear)} rooms of {victim} have a longest gap that is not the outage (up to "
              f"{max(unclear)[0] / 1000:.2f} s): {', '.join(r for _, r in unclear[:10])}")
    if never:
        print(f"  {len(never)} rooms of {victim} got NO delivery after the kill: "
              f"{', '.join(never[:10])}{' ...' if len(never) > 10 else ''}")
    print(f"  target: max <= 5 s in every room of {victim}: {'PASS' if ok else 'FAIL'}")
    other = [gaps[r]["max_gap_ms"] for r in gaps if owners.get(r) != victim and gaps[r].get("max_gap_ms") is not None]
    if other:
        print(f"  rooms on the surviving nodes ({len(other)}): longest gap p50 {pct(other, 0.5):.0f} ms, "
              f"max {max(other):.0f} ms")
    fanout = step.get("fanout") or {}
    print(f"  sent {step.get('sent')}, delivered {step.get('delivered')} of {step.get('expected_deliveries')}, "
          f"duplicates {step.get('duplicates')}, out of order {step.get('out_of_order')}; fan-out p50 {fmt(fanout.get('p50_ms'), '.1f')} ms, "
          f"p99 {fmt(fanout.get('p99_ms'), '.1f')} ms, max {fmt(fanout.get('max_ms'), '.0f')} ms")
    print(f"  errors {errors.get('total')}: connect {errors.get('connect_failures')}, closes "
          f"{errors.get('unexpected_closes')}, missing {errors.get('missing_deliveries')}, send "
          f"{errors.get('send_failures')}, protocol {errors.get('protocol_errors')}")
    lossy = [(r, g["missing_deliveries"]) for r, g in sorted(gaps.items(), key=lambda kv: by_index(kv[0]))
             if g["missing_deliveries"]]
    if lossy:
        print("  missing deliveries by room: " + ", ".join(
            f"{r} ({owners.get(r)}) {n}" for r, n in lossy[:10]) + (" ..." if len(lossy) > 10 else ""))
    for sample in fo.get("error_samples") or []:
        print(f"    {sample}")


if run_s1:
    s1_results()
if run_failover:
    failover_results()
PY

echo >&2
log "WARN/ERROR lines in the server logs, by message (all logs in $OUT):"
python3 - "$OUT" "${cluster_names[@]}" dev <<'PY' >&2
import collections, os, re, sys
out = sys.argv[1]
for name in sys.argv[2:]:
    try:
        lines = open(os.path.join(out, f"{name}.err"), errors="replace").read().splitlines()
    except OSError:
        continue
    counts, first = collections.Counter(), {}
    for line in lines:
        m = re.match(r"(\S+)\s+(WARN|ERROR) (\S+): (.*?)(?: \w+=|$)", line)
        if m:
            key = f"{m.group(2)} {m.group(3)}: {m.group(4)}"
            counts[key] += 1
            first.setdefault(key, line)
    for key, n in counts.most_common():
        print(f"  {name}: {n} x {key}")
        print(f"      first: {first[key][:400]}")
PY
echo "raw results: $OUT" >&2
