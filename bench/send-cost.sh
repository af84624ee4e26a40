#!/usr/bin/env bash
# Where a server's CPU goes under S1 (100 rooms × 10 clients × 1 update/s),
# for `partyline dev` (release) and for @y/websocket-server 0.1.1 under the
# same load: `perf stat` (task clock, context switches, socket-write system
# calls) and `perf record -g` for 5 s in the middle of a 22 s run, then the
# kernel functions that tell the cost of a delivery's send apart from the
# rest (the send path, waking the receiver, scheduling, futex wake-ups).
# perf runs inside the bench's window, so the bench's own CPU totals are a
# little inflated for both servers; compare the perf figures.
#
#   bench/send-cost.sh                  # both servers
#   bench/send-cost.sh partyline        # one of them
#   DEVARGS="--worker-threads 1" bench/send-cost.sh partyline
#
# Needs perf (Debian: linux-perf) allowed to attach to the server.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(partyline peer)

# shellcheck source=bench/common.sh
. bench/common.sh
need_peer
OUT=${OUT:-$bin_dir/bench/send-cost-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

for target in "${targets[@]}"; do
  port=$(free_port)
  data=$(mktemp -d)
  if [ "$target" = partyline ]; then
    # shellcheck disable=SC2086
    PARTYLINE_LOG=warn "$partyline" dev ${DEVARGS:-} --listen "127.0.0.1:$port" --data-dir "$data" >/dev/null 2>"$OUT/$target.err" &
  else
    HOST=127.0.0.1 PORT=$port node "$peer_js" >/dev/null 2>"$OUT/$target.err" &
  fi
  server=$!
  sleep 1
  (
    sleep 8
    perf stat -e task-clock,context-switches,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write \
      -p "$server" -o "$OUT/$target.stat" -- sleep 5
    perf record -F 2999 -g -p "$server" -o "$OUT/$target.perf" -- sleep 5 >/dev/null 2>&1
  ) &
  probe=$!
  echo "== $target" >&2
  "$partyline" bench --url "ws://127.0.0.1:$port/{room}" --server-pid "$server" \
    --rooms 100 --clients 10 --rate 1 --duration 22s >"$OUT/$target.json" 2>"$OUT/$target.txt" || true
  wait "$probe"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
  grep -A1 '^  rate' "$OUT/$target.txt" || true
  grep -E 'task-clock|context-switches|sys_enter' "$OUT/$target.stat"
  perf report -i "$OUT/$target.perf" --children --sort sym -g none 2>/dev/null |
    grep -E '\] (tcp_sendmsg|__x64_sys_sendto|__x64_sys_writev|sock_def_readable|net_rx_action|schedule|__x64_sys_futex|__x64_sys_epoll_wait)$' || true
done
echo "raw results: $OUT" >&2
