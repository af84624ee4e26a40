#!/usr/bin/env bash
# Runs the standard benchmark scenarios against `partyline dev` (release
# build) and, in the same run, against @y/websocket-server 0.1.1 (the
# fastest y-websocket-compatible peer measured here; installed from npm
# into tests/js by this script), then prints both rows and their ratio.
#
#   bench/compare.sh                 # all scenarios, issue-sized (~6 min)
#   bench/compare.sh S1 S3           # some of them
#   DURATION=10s bench/compare.sh    # shorter S1/S2 runs
#   BASE_BIN=/path/to/old/partyline bench/compare.sh S1 S2
#                                    # A/B: an older build in the peer's place
#
# Raw JSON lines are kept in $OUT (default target/bench/<timestamp>/).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30s}
STEP=${STEP:-10s}
RAMP_MAX=${RAMP_MAX:-12}
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(S1 S2 S3 S4)

# shellcheck source=bench/common.sh
. bench/common.sh
[ -n "${BASE_BIN:-}" ] || need_peer
OUT=${OUT:-$bin_dir/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

server_pid=""
start_server() { # $1 = partyline|peer ; sets server_pid and url
  local port
  port=$(free_port)
  if [ "$1" = partyline ] || [ -n "${BASE_BIN:-}" ]; then
    local data bin=$partyline
    data=$(mktemp -d)
    [ "$1" = peer ] && bin=$BASE_BIN
    PARTYLINE_LOG=warn "$bin" dev --listen "127.0.0.1:$port" --data-dir "$data" >"$OUT/$1.out" 2>>"$OUT/$1.err" &
  else
    HOST=127.0.0.1 PORT=$port node "$peer_js" >"$OUT/$1.out" 2>>"$OUT/$1.err" &
  fi
  server_pid=$!
  url="ws://127.0.0.1:$port/{room}"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server $1 did not start" >&2
  return 1
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
trap stop_server EXIT

args_for() {
  case $1 in
    S1) echo "--rooms 100 --clients 10 --rate 1 --duration $DURATION" ;;
    S2) echo "--rooms 1 --clients 200 --rate 0.5 --duration $DURATION" ;;
    S3) echo "--idle --rooms 200 --clients 10 --duration 10s" ;;
    S4) echo "--ramp --rooms 100 --clients 10 --ramp-start 2 --ramp-step 1 --ramp-max $RAMP_MAX --step-duration $STEP" ;;
  esac
}

for scenario in "${scenarios[@]}"; do
  for target in partyline peer; do
    echo "== $scenario on $target: partyline bench $(args_for "$scenario")" >&2
    start_server "$target"
    # shellcheck disable=SC2046
    "$partyline" bench --url "$url" --server-pid "$server_pid" $(args_for "$scenario") \
      >"$OUT/$scenario-$target.json" 2>"$OUT/$scenario-$target.txt" || true
    tail -n 12 "$OUT/$scenario-$target.txt" >&2
    stop_server
  done
done

python3 - "$OUT" "${scenarios[@]}" <<'PY'
import json, sys, os
out, scenarios = sys.argv[1], sys.argv[2:]
def load(s, t):
    try:
        with open(os.path.join(out, f"{s}-{t}.json")) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": str(e)}
def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"
def share(part, whole):
    return part / whole if isinstance(part, (int, float)) and whole else None
def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"
print()
print(f"{'scenario':8} {'server':10} {'p99 ms':>8} {'cpu s/1k':>9} {'kernel':>7} {'deliv/s':>9} {'errors':>7} {'rss/conn KiB':>13} {'max ok rate':>12}")
for s in scenarios:
    rows = {}
    for t in ("partyline", "peer"):
        r = load(s, t)
        step = (r.get("steps") or [{}])[-1] if s in ("S1", "S2") else {}
        idle = r.get("idle") or {}
        rss = idle.get("server_rss_per_connection_bytes")
        row = {
            "p99": step.get("judged_p99_ms"),
            "cpu": step.get("server_cpu_seconds_per_1k_delivered"),
            "sys": share(step.get("server_system_cpu_seconds"), step.get("server_cpu_seconds")),
            "dps": step.get("delivered_per_second"),
            "err": (r.get("errors") or {}).get("total"),
            "rss": rss / 1024 if isinstance(rss, (int, float)) else None,
            "max": r.get("max_ok_rate"),
        }
        rows[t] = row
        print(f"{s:8} {t:10} {fmt(row['p99'], '8.2f')} {fmt(row['cpu'], '9.4f')} {fmt(row['sys'], '7.0%')} {fmt(row['dps'], '9.0f')} "
              f"{fmt(row['err'], '7d')} {fmt(row['rss'], '13.1f')} {fmt(row['max'], '12.1f')}")
    a, b = rows["partyline"], rows["peer"]
    print(f"{s:8} {'ratio':10} {ratio(a['p99'], b['p99']):>8} {ratio(a['cpu'], b['cpu']):>9} {'':>7} {'':>9} {'':>7} "
          f"{ratio(a['rss'], b['rss']):>13} {ratio(a['max'], b['max']):>12}")
print(f"\nraw results: {out}")
PY
