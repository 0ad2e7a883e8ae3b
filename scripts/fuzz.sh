#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer), each for SECONDS,
# one after the other, from its committed corpus (fuzz/corpus/TARGET, read
# only: new inputs go to a scratch directory, see --keep). Prints one line
# per target: executions, exec/s, coverage (cov/ft), and fails on the
# first finding (the reproducer is in fuzz/artifacts/TARGET/).
#
#   scripts/fuzz.sh [--keep] [SECONDS] [TARGET...]     (default: 30 s, every target)
#
# --keep: merge what the run found into the committed corpus (libFuzzer's
# -merge=1: only inputs that add coverage, at most 4 KiB each).
# Needs nightly and cargo-fuzz (scripts/install-fuzz.sh); fails if either
# is missing. Builds with -s none (see README "Fuzzing": the crate forbids
# unsafe code) and debug assertions (overflow checks on).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
keep=0
if [ "${1:-}" = "--keep" ]; then keep=1; shift; fi
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
flags=(-s none -a)
# FUZZ_NO_BUILD=1: run the binaries already built (while a rebuild runs).
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  cargo +nightly fuzz build "${flags[@]}"
fi
bin=target/x86_64-unknown-linux-gnu/release
status=0
printf '%-16s %12s %8s %6s %7s %6s  %s\n' target execs exec/s secs cov ft result
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "corpus/$t" "artifacts/$t"
  rc=0
  "$bin/$t" "$scratch" "corpus/$t" \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=3072 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  if [ "$rc" -eq 0 ]; then result=ok; else result="FINDING (exit $rc)"; status=1; fi
  printf '%-16s %12s %8s %6s %7s %6s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$secs" "${cov:-?}" "${ft:-?}" "$result"
  # A target's own running count (authz_oracle: decisions compared).
  grep '^oracle: ' "$log" | tail -1 | sed 's/^/    /' || true
  if [ "$rc" -ne 0 ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20
    cp "$log" "artifacts/$t/last-run.log"
  elif [ "$keep" -eq 1 ]; then
    # libFuzzer's merge: only the inputs that add coverage to the corpus.
    "$bin/$t" -merge=1 -max_len=4096 -timeout=20 -rss_limit_mb=3072 \
      "corpus/$t" "$scratch" >/dev/null 2>&1
  fi
  rm -rf "$scratch" "$log"
done
exit $status
