#!/usr/bin/env bash
# Restoring a version of a ~1 MiB document (issue 20, point 6): time from
# the API call to every live client converged. `partyline dev` (release
# build) and bench/restore-version.mjs (y-websocket providers); see there.
#
#   bench/restore-version.sh
#   CLIENTS=8 PARAGRAPHS=8000 ROUNDS=10 bench/restore-version.sh
#   PARTYLINE_RELEASE_BIN=/path/to/partyline bench/restore-version.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
if [ ! -d tests/js/node_modules/y-websocket ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
node bench/restore-version.mjs "$partyline"
