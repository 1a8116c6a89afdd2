#!/usr/bin/env bash
# A suite that reads the source tree, run from a copy of the build folder as on a GPU machine:
#   bash tests/gpu_check/carried_suite.sh SUITE_EXECUTABLE SOURCE_DIR
# SUITE_EXECUTABLE is nifti_malformed_test (it replays tests/data/nifti_malformed). Its copy finds the
# tree named by VOXGRAD_SOURCE_DIR, or the tree above it; a wrong VOXGRAD_SOURCE_DIR fails clearly.
set -uo pipefail
suite="${1:?usage: carried_suite.sh SUITE_EXECUTABLE SOURCE_DIR}"
source_dir="${2:?usage: carried_suite.sh SUITE_EXECUTABLE SOURCE_DIR}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/voxgrad-carried.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
failures=0
expect() {  # expect DESCRIPTION COMMAND...
  local what="$1"
  shift
  if ! "$@"; then
    echo "FAIL: $what" >&2
    failures=$((failures + 1))
  fi
}
# Runs the copy at $1 with the environment assignments that follow; output in $tmp/log.
run_copy() {
  local exe="$1"
  shift
  status=0
  (cd "$tmp" && env -u VOXGRAD_SOURCE_DIR "$@" "$exe" --gtest_color=no --gtest_filter='NiftiMalformed.*') \
    >"$tmp/log" 2>&1 || status=$?
}
passed_all() { grep -q '^\[  PASSED  \]' "$tmp/log" && ! grep -q '^\[  FAILED  \]' "$tmp/log"; }

# Another machine: the build folder copied somewhere with no tree above it, the tree elsewhere.
mkdir -p "$tmp/elsewhere/bin"
cp "$suite" "$tmp/elsewhere/bin/suite"
run_copy "$tmp/elsewhere/bin/suite" VOXGRAD_SOURCE_DIR="$source_dir"
expect "the copy passes with VOXGRAD_SOURCE_DIR" test "$status" -eq 0
expect "... and ran the corpus tests" passed_all
cp "$tmp/log" "$tmp/with_env.log"

run_copy "$tmp/elsewhere/bin/suite" VOXGRAD_SOURCE_DIR="$tmp/elsewhere"
expect "a wrong VOXGRAD_SOURCE_DIR fails" test "$status" -ne 0
expect "... saying so" grep -q "VOXGRAD_SOURCE_DIR=$tmp/elsewhere does not hold voxgrad's source tree" "$tmp/log"

# The tree above the copied build folder, as a lent device holds it: a copy of the corpus whose
# manifest lists one file, so the suite's corpus check tells this copy from the tree it was built in.
tree="$tmp/tree"
mkdir -p "$tree/tests/data" "$tree/build-gpu/bin"
cp "$source_dir/tests/test_support.h" "$tree/tests/"
cp -r "$source_dir/tests/data/nifti_malformed" "$tree/tests/data/"
cp "$suite" "$tree/build-gpu/bin/suite"
run_copy "$tree/build-gpu/bin/suite"
expect "the tree above the copy is found without VOXGRAD_SOURCE_DIR" test "$status" -eq 0
head -n 2 "$source_dir/tests/data/nifti_malformed/manifest.tsv" | grep -v '^#' | head -n 1 \
  >"$tree/tests/data/nifti_malformed/manifest.tsv"
run_copy "$tree/build-gpu/bin/suite"
expect "... and it is that tree the suite reads (a one-line manifest fails its check)" \
  grep -q "manifest.tsv missing or short" "$tmp/log"
run_copy "$tmp/elsewhere/bin/suite" VOXGRAD_SOURCE_DIR="$tree"
expect "VOXGRAD_SOURCE_DIR's tree is the one read, not the one the build recorded" \
  grep -q "manifest.tsv missing or short" "$tmp/log"

if ((failures > 0)); then
  echo "---- last run" >&2
  tail -n 30 "$tmp/log" >&2
  exit 1
fi
echo "carried_suite.sh: ok"
