#!/usr/bin/env bash
# The npm distribution (issue 17): packs the Linux x64 tarballs of the
# release binary (scripts/package-npm.sh), installs them into an empty
# project, prints the sizes (release binary, packaged stripped binary,
# platform tarball, main tarball), then start-up through the launcher:
# `npx partyline dev` → first accepted WebSocket, median of RUNS (10), next
# to the installed bin script and to the binary run directly.
#
#   bench/npm-package.sh                    # builds the release binary
#   PARTYLINE_RELEASE_BIN=path bench/npm-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
RUNS=${RUNS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/package-npm.sh "$work/tarballs" "$partyline" >/dev/null
mkdir "$work/app"
(cd "$work/app" && echo '{"name":"app","version":"1.0.0","private":true}' >package.json &&
  npm install --no-audit --no-fund --loglevel=error "$work"/tarballs/*.tgz >/dev/null)
installed="$work/app/node_modules/@partyline/cli-linux-x64/bin/partyline"
mib() { awk -v b="$1" 'BEGIN { if (b < 1048576) printf "%.1f KiB", b / 1024; else printf "%.1f MiB", b / 1048576 }'; }
size() { stat -c %s "$1"; }
printf '%-40s%s\n' "release binary (unstripped)" "$(mib "$(size "$partyline")")" >&2
printf '%-40s%s\n' "installed binary (stripped)" "$(mib "$(size "$installed")")" >&2
for t in "$work"/tarballs/*.tgz; do
  printf '%-40s%s\n' "$(basename "$t")" "$(mib "$(size "$t")")" >&2
done
node bench/npm-startup.mjs "$RUNS" "$work/app" "$installed"
