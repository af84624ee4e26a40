#!/usr/bin/env bash
# Runs Partyline's coverage-guided fuzz targets (fuzz/, cargo-fuzz on the
# nightly toolchain) for SECONDS each (default 300), every target unless
# some are named. Each starts from its committed seeds (fuzz/corpus/T) plus
# what earlier runs found (fuzz/scratch/T, git-ignored); a crash is written
# to fuzz/artifacts/T/ and the run's log to fuzz/scratch/T.log. Prints a
# line per target and a closing "fuzz: N passed, N failed"; exits non-zero
# when any target crashed, hung (an input over 10 s), ran out of memory
# (over 2 GB, or one allocation over 2 GB) or did not build.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   scripts/fuzz.sh --prepare   # only check for nightly, install cargo-fuzz
#
# With PARTYLINE_FUZZ_SEED=N (what scripts/test.sh sets) a run is repeatable:
# libFuzzer's random seed is N and the run starts from the committed seeds
# alone (its finds go to a temporary directory, not fuzz/scratch), so one
# commit gives one result on any machine of the same speed, instead of a
# suite that fails at random on a bug the commit did not touch. Exploring
# is the job of runs without it: a random seed and every earlier find.
#
# Builds go to fuzz/target (PARTYLINE_FUZZ_TARGET_DIR to move them), never
# to the workspace's target dir: fuzz builds are instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: the fuzz targets need the nightly toolchain (cargo +nightly failed); install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  printf '\n== installing cargo-fuzz\n'
  cargo install --locked cargo-fuzz
fi
[ "${1:-}" = --prepare ] && exit 0

seconds=${1:-300}
[ $# -gt 0 ] && shift
case $seconds in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...] | --prepare" >&2; exit 2 ;;
esac

target_dir=${PARTYLINE_FUZZ_TARGET_DIR:-$root/fuzz/target}
export CARGO_TARGET_DIR=$target_dir
# An impossible allocation request gets null, as from the system allocator
# in production (yrs then refuses the input); ASan would report it instead.
# A request over libFuzzer's malloc limit (2 GB) still fails the run: that
# many bytes asked for by one small frame is a finding. Set here for the
# build too: a change re-runs build scripts.
export ASAN_OPTIONS=allocator_may_return_null=1
fuzz=(cargo +nightly fuzz)

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list)
fi

# One target builds alone; several build together (all of fuzz/).
build_only=()
[ ${#targets[@]} -eq 1 ] && build_only=("${targets[0]}")
printf '\n== cargo fuzz build (%s)\n' "${targets[*]}"
if ! "${fuzz[@]}" build --target-dir "$target_dir" "${build_only[@]}"; then
  echo "fuzz: 0 passed, ${#targets[@]} failed (the targets did not build)"
  exit 1
fi

passed=0
failed=0
for target in "${targets[@]}"; do
  printf '\n== fuzz %s (%s s)\n' "$target" "$seconds"
  mkdir -p "fuzz/scratch/$target" "fuzz/corpus/$target"
  log="fuzz/scratch/$target.log"
  # New inputs go to the first dir; the seeds stay as committed.
  finds="fuzz/scratch/$target"
  repeatable=()
  if [ -n "${PARTYLINE_FUZZ_SEED:-}" ]; then
    finds=$(mktemp -d)
    repeatable=(-seed="$PARTYLINE_FUZZ_SEED")
  fi
  if "${fuzz[@]}" run --target-dir "$target_dir" "$target" \
      "$finds" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 "${repeatable[@]}" >"$log" 2>&1; then
    passed=$((passed + 1))
    # libFuzzer's last status line: executions, coverage, corpus, speed.
    grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$log" | tail -n 1 || true
  else
    failed=$((failed + 1))
    # The report: from the first error to the input's path, without
    # libFuzzer's progress lines or cargo-fuzz's own backtrace.
    awk '/ERROR: |uncaught panic|panicked at|^error/ { on = 1 }
         /^Error: / { exit }
         on && !/^#[0-9]+[ \t]+(NEW|REDUCE|pulse|RELOAD)/ && n++ < 120' "$log"
    echo "fuzz $target: FAILED (full log: $log)"
  fi
  if [ -n "${PARTYLINE_FUZZ_SEED:-}" ]; then rm -rf "$finds"; fi
done

echo
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
