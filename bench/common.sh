# Sourced by the bench scripts, from the repository root: builds the release
# binary (sets $bin_dir, the cargo target directory, and $partyline) and
# defines the helpers they share.
# PARTYLINE_RELEASE_BIN runs an already built binary instead (e.g. an older
# build for an A/B comparison).
bin_dir=$(cargo metadata --format-version 1 --no-deps | sed -nE 's/.*"target_directory":"([^"]*)".*/\1/p')
if [ -n "${PARTYLINE_RELEASE_BIN:-}" ]; then
  partyline="$PARTYLINE_RELEASE_BIN"
else
  cargo build --release --locked --bin partyline >&2
  partyline="$bin_dir/release/partyline"
fi

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Installs @y/websocket-server 0.1.1 (pinned in tests/js) when missing and
# sets $peer_js, its server script.
need_peer() {
  if [ ! -d tests/js/node_modules/@y/websocket-server ]; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error) >&2
  fi
  peer_js="$PWD/tests/js/node_modules/@y/websocket-server/src/server.js"
}
