#!/usr/bin/env bash
# Memory after rooms unload (issue 16): CYCLES (10) cycles of ROOMS (400)
# rooms, one client each writing PAYLOAD (50 KB) of text, opened, closed and
# unloaded by `partyline dev --idle-timeout 2s`. After each cycle, once the
# rooms-loaded gauge is back at 0, prints the server's resident memory.
#
#   bench/unload-memory.sh                       # the shipped default
#   EXTRA="--memory-trim-delay 0s" bench/unload-memory.sh   # trimming off
#
# Verdict: RSS with no room loaded flat over the last five cycles (max/min
# within 10 %) and the last cycle within 2x the first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
CYCLES=${CYCLES:-10}
ROOMS=${ROOMS:-400}
PAYLOAD=${PAYLOAD:-51200}
port=$(free_port)
ops=$(free_port)
data=$(mktemp -d)
# shellcheck disable=SC2086
PARTYLINE_LOG=warn "$partyline" dev --listen "127.0.0.1:$port" --data-dir "$data" \
  --idle-timeout 2s --ops-listen "127.0.0.1:$ops" ${EXTRA:-} >/dev/null 2>"$data.err" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data" "$data.err"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ops/healthz" >/dev/null && break
  sleep 0.1
done
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
loaded() { curl -sf "http://127.0.0.1:$ops/metrics" | awk '/^partyline_rooms_loaded/ {print $NF}' | head -n 1; }
echo "start: $(( $(rss_kib) / 1024 )) MiB"
results=()
for cycle in $(seq "$CYCLES"); do
  "$partyline" bench --url "ws://127.0.0.1:$port/{room}" --rooms "$ROOMS" --clients 1 \
    --rate 1 --duration 1s --drain 2s --payload-bytes "$PAYLOAD" \
    --room-prefix "unload-$cycle-" >/dev/null 2>&1
  for _ in $(seq 600); do
    [ "$(loaded)" = "0" ] && break
    sleep 0.1
  done
  # The trim runs a second after the last unload.
  sleep 2
  rss=$(rss_kib)
  results+=("$rss")
  echo "cycle $cycle: rooms loaded $(loaded), RSS $(( rss / 1024 )) MiB"
done
printf '%s\n' "${results[@]}" | awk -v n="$CYCLES" '
  { v[NR] = $1 }
  END {
    lo = hi = v[n - 4]
    for (i = n - 4; i <= n; i++) { if (v[i] < lo) lo = v[i]; if (v[i] > hi) hi = v[i] }
    flat = (hi <= lo * 1.10); within = (v[n] <= 2 * v[1])
    printf "last five: %d-%d MiB (%s); last/first %.2f (%s)\n", lo / 1024, hi / 1024,
      flat ? "flat" : "NOT flat", v[n] / v[1], within ? "within 2x" : "NOT within 2x"
    exit !(flat && within)
  }'
