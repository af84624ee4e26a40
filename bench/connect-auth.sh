#!/usr/bin/env bash
# Connect rate with each client authorization mode against a release
# `partyline dev`: none, jwt (HS256 token in ?token=), webhook (a Python
# server that always answers write; the first run fills the cache, the
# second is warm), and webhook with what a browser sends (Cookie, Origin,
# User-Agent: forwarded to the webhook, in its cache key) and signed
# requests (--webhook-secret). 2,000 idle connections in 200 rooms, twice
# per mode.
#
#   bench/connect-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
secret=bench-secret-0123456789abcdef0123456789
data=$(mktemp -d)
trap 'rm -rf "$data"; kill ${hook_pid:-} 2>/dev/null || true' EXIT
# Extra flags of the bench client (headers), per mode.
bench_extra=()

run() { # label prefix url-suffix dev-args...
  local label=$1 prefix=$2 suffix=$3
  shift 3
  local port
  port=$(free_port)
  rm -rf "${data:?}"/*
  PARTYLINE_LOG=warn "$partyline" dev --listen "127.0.0.1:$port" --data-dir "$data" "$@" >/dev/null 2>&1 &
  local server=$!
  sleep 1
  for r in 1 2; do
    "$partyline" bench --url "ws://127.0.0.1:$port/{room}$suffix" --server-pid "$server" \
      --idle --rooms 200 --clients 10 --duration 2s --room-prefix "$prefix" \
      "${bench_extra[@]}" 2>&1 >/dev/null |
      sed -n "s/^connect:/$label run $r:/p"
  done
  kill "$server"
  wait "$server" 2>/dev/null || true
}

run none bnone ""
token=$(SECRET=$secret python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(',', ':')).encode()).rstrip(b'=').decode()
head = b({"alg": "HS256", "typ": "JWT"})
body = b({"sub": "bench", "exp": int(time.time()) + 3600, "rooms": {"bjwt*": "write"}})
sig = hmac.new(os.environ["SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}")
PY
)
run jwt bjwt "?token=$token" --auth-mode jwt --jwt-secret "$secret"

hook_port=$(free_port)
HOOK_PORT=$hook_port python3 - <<'PY' 2>/dev/null &
import http.server, json, os
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        body = json.dumps({"access": "write", "user": {"id": "bench"}}).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ["HOOK_PORT"])), Hook).serve_forever()
PY
hook_pid=$!
sleep 0.5
run "webhook (run 1 cold, run 2 warm)" bhook "?token=t" --auth-mode webhook \
  --webhook-url "http://127.0.0.1:$hook_port/auth" --cache-ttl 60s

# What a browser page sends with its upgrade; each client its own cookie
# would make every connect a cache miss, so one session cookie for all, as
# one user's tabs.
bench_extra=(--header "Cookie: session=0123456789abcdef0123456789abcdef; theme=dark"
  --header "Origin: https://app.example.com"
  --header "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36")
run "webhook + browser headers, signed (run 1 cold, run 2 warm)" bhookh "?token=t" --auth-mode webhook \
  --webhook-url "http://127.0.0.1:$hook_port/auth" --cache-ttl 60s \
  --webhook-secret "whsec_$(head -c 32 /dev/urandom | base64)"
