#!/usr/bin/env bash
# Writes the npm tarballs of Partyline for Linux x86-64 into OUT_DIR: the
# platform package @partyline/cli-linux-x64 and the main package partyline
# (its launcher), both at the version of Cargo.toml.
#
#   scripts/package-npm.sh OUT_DIR [BINARY]
#
# Without BINARY it builds the release binary (cargo build --release, ~6 min
# from scratch). The packaged copy is stripped: symbols and line tables
# make up three quarters of the release binary and no user reads them.
# Install the result into any project with
#   npm install OUT_DIR/partyline-cli-linux-x64-V.tgz OUT_DIR/partyline-V.tgz
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [BINARY]" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
binary=${2:-}

version=$(sed -nE '/^\[workspace\.package\]/,/^\[/ s/^version = "([^"]+)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || { echo "no version in Cargo.toml [workspace.package]" >&2; exit 1; }

if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked --bin partyline)
  target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -nE 's/.*"target_directory":"([^"]*)".*/\1/p')
  binary="$target_dir/release/partyline"
fi
[ -x "$binary" ] || { echo "$binary is not an executable" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
strip -o "$stage/partyline" "$binary"

platform_dir=$(node "$root/npm/stage.mjs" --target linux-x64 --binary "$stage/partyline" \
  --version "$version" --out "$stage/packages")
main_dir=$(node "$root/npm/stage.mjs" --main --version "$version" --out "$stage/packages")
for dir in "$platform_dir" "$main_dir"; do
  (cd "$dir" && npm pack --silent --pack-destination "$out" >/dev/null)
done
ls -1 "$out"/partyline-"$version".tgz "$out"/partyline-cli-linux-x64-"$version".tgz
