#!/usr/bin/env bash
# tools/gpu-check's budget and reporting on a fake GPU machine: fake test executables, a fake
# compute-sanitizer and a fake voxgrad, steered by FAKE_* variables, one scenario per run:
#   bash tests/gpu_check/fake_device.sh SCENARIO
# Exits 0 when gpu-check reported the scenario as it must, else prints what differed and exits 1.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
scenario="${1:?usage: fake_device.sh SCENARIO}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/voxgrad-fake-device.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
bin="$tmp/build/bin" fakes="$tmp/fakes"
mkdir -p "$bin" "$fakes" "$tmp/cudnn" "$tmp/work"
: >"$tmp/cudnn/libcudnn.so.9"
export FAKE_RECORD="$tmp/record"
: >"$FAKE_RECORD"

# A gtest executable with two GPU tests; FAKE_FAILING / FAKE_SLOW name executables that fail / hang
# (hanging only outside the sanitizer), FAKE_SKIP=1 makes every test skip as on a machine without a GPU.
cat >"$fakes/gtest" <<'FAKE'
#!/usr/bin/env bash
name="$(basename "$0")"
filter=""
for a in "$@"; do [[ $a == --gtest_filter=* ]] && filter="${a#--gtest_filter=}"; done
if [[ " $* " == *" --gtest_list_tests "* ]]; then
  [[ $name == cpu_only_test ]] || printf 'Fake.\n  CudaMatchesCpu\n  GpuWorks\n'
  exit 0
fi
echo "test $name filter=$filter sync=${VOXGRAD_CUDA_SYNC:-unset} source=${VOXGRAD_SOURCE_DIR:-unset}" \
  "binary=${VOXGRAD_BINARY:-unset} sanitizer=${FAKE_UNDER_SANITIZER:-no}" >>"$FAKE_RECORD"
[[ " ${FAKE_SLOW:-} " == *" $name "* && -z ${FAKE_UNDER_SANITIZER:-} ]] && sleep 60
echo "[==========] Running 2 tests from 1 test suite."
echo "[ RUN      ] Fake.CudaMatchesCpu"
if [[ -n ${FAKE_SKIP:-} ]]; then
  echo "[  SKIPPED ] Fake.CudaMatchesCpu (0 ms)"
  echo "[  SKIPPED ] Fake.GpuWorks (0 ms)"
  exit 0
fi
echo "[       OK ] Fake.CudaMatchesCpu (3 ms)"
echo "[ RUN      ] Fake.GpuWorks"
if [[ " ${FAKE_FAILING:-} " == *" $name "* ]]; then
  echo "tests/fake_test.cpp:12: Failure"
  echo "[  FAILED  ] Fake.GpuWorks (1 ms)"
  echo "[  FAILED  ] 1 test, listed below:"
  exit 1
fi
echo "[       OK ] Fake.GpuWorks (2 ms)"
echo "[  PASSED  ] 2 tests."
exit 0
FAKE

# compute-sanitizer: runs the program, then prints an ERROR SUMMARY per process. The allocator's
# out-of-memory test counts one error unless API errors are not reported; train_cli_test starts a
# child whose summary (FAKE_CHILD_ERRORS) appears only with --target-processes all, before the
# parent's. FAKE_SANITIZER_REFUSES=1 answers as on a sandbox that refuses the device.
cat >"$fakes/compute-sanitizer" <<'FAKE'
#!/usr/bin/env bash
echo "sanitizer $*" >>"$FAKE_RECORD"
all=0 api=yes
while [[ $1 == --* ]]; do
  case "$1" in
    --target-processes) [[ $2 == all ]] && all=1; shift 2 ;;
    --report-api-errors) api="$2"; shift 2 ;;
    *) shift 2 ;;
  esac
done
if [[ -n ${FAKE_SANITIZER_REFUSES:-} ]]; then
  echo "========= Error: Device not supported"
  exit 1
fi
[[ -n ${FAKE_SANITIZER_SLOW:-} ]] && sleep 60
FAKE_UNDER_SANITIZER=yes "$@"
rc=$?
errors=0
filter="${*: -1}"
filter="${filter#--gtest_filter=}"
if [[ $(basename "$1") == allocator_test && $filter != *-*OutOfMemory* && $api != no ]]; then
  echo "========= Program hit cudaErrorMemoryAllocation (error 2) due to \"out of memory\" on CUDA API call to cudaMalloc."
  errors=1
fi
if [[ $(basename "$1") == train_cli_test && $all == 1 ]]; then
  echo "========= ERROR SUMMARY: ${FAKE_CHILD_ERRORS:-0} errors"
fi
echo "========= ERROR SUMMARY: $errors errors"
((errors > 0)) && exit 86
exit "$rc"
FAKE

# voxgrad: one device (FAKE_DEVICES), quick benchmarks, the demo's commands, eval's Dice.
cat >"$bin/voxgrad" <<'FAKE'
#!/usr/bin/env bash
echo "voxgrad $* (sync=${VOXGRAD_CUDA_SYNC:-unset})" >>"$FAKE_RECORD"
case "$1" in
  devices) echo "{\"cuda_devices\":${FAKE_DEVICES:-1},\"devices\":[{\"index\":0,\"name\":\"Fake H200\"}]}" ;;
  bench) echo '{"case":"add"}'; echo "bench on Fake H200" >&2 ;;
  eval) echo '{"foreground_mean":{"Dice":0.625}}' ;;
esac
exit 0
FAKE
chmod +x "$fakes/gtest" "$fakes/compute-sanitizer" "$bin/voxgrad"
for t in allocator tensor ops optim metrics norm_pool losses conv train_cli cli; do
  cp "$fakes/gtest" "$bin/${t}_test"
done
rm "$fakes/gtest"

failures=0
expect() {  # expect DESCRIPTION COMMAND...: counts a failure when COMMAND fails
  local what="$1"
  shift
  if ! "$@"; then
    echo "FAIL: $what" >&2
    failures=$((failures + 1))
  fi
}
has_line() { grep -qE -- "$2" "$1"; }
lacks_line() { ! grep -qE -- "$2" "$1"; }

# Runs gpu-check with extra arguments; its stdout, stderr, exit status and seconds land in $tmp.
run_check() {
  local began=$SECONDS
  status=0
  env PATH="$fakes:$PATH" LD_LIBRARY_PATH="$tmp/cudnn" OUT="$tmp/out" TMPDIR="$tmp/work" \
    "$root/tools/gpu-check" "$@" "$tmp/build" >"$tmp/stdout" 2>"$tmp/stderr" || status=$?
  took=$((SECONDS - began))
}
phase() { has_line "$tmp/stdout" "^gpu-check: $1 +$2"; }
verdict() { has_line "$tmp/stdout" "^gpu-check: $1 in "; }

case "$scenario" in
  all_pass)
    run_check --budget 60
    expect "exit 0" test "$status" -eq 0
    expect "tests passed, 20 GPU tests in 10 executables" phase tests "passed +20 GPU tests ran in 10 executables"
    expect "memcheck passed, 10 suites" phase memcheck "passed +10 suites clean"
    expect "bench passed" phase bench passed
    expect "demo passed with eval's Dice" phase demo "passed +foreground mean Dice 0.625 after 2 epochs"
    expect "verdict PASS" verdict PASS
    expect "the summary in \$OUT holds the verdict" has_line "$tmp/out/summary.txt" "^gpu-check: PASS in "
    for f in summary.txt tests.log memcheck.log bench.log demo.log; do
      expect "\$OUT/$f written" test -s "$tmp/out/$f"
    done
    expect "at most 8 files in \$OUT, none in folders" test "$(find "$tmp/out" -mindepth 1 | wc -l)" -le 8
    expect "tests.log holds each executable's output" has_line "$tmp/out/tests.log" "^==== conv_test \(exit 0"
    expect "memcheck.log holds the sanitizer's summaries" has_line "$tmp/out/memcheck.log" "ERROR SUMMARY: 0 errors"
    expect "only the GPU tests run, with VOXGRAD_CUDA_SYNC=1, the tree and the carried voxgrad" \
      test "$(grep -c "^test .* filter=\*Cuda\*:\*Gpu\* sync=1 source=$root binary=$bin/voxgrad sanitizer=no$" \
        "$FAKE_RECORD")" -eq 10
    expect "every sanitizer run follows children" \
      test "$(grep -c '^sanitizer --tool memcheck --target-processes all ' "$FAKE_RECORD")" -eq 10
    expect "the out-of-memory test runs with API-error reporting off" \
      has_line "$FAKE_RECORD" "^sanitizer .*--report-api-errors no .*allocator_test .*filter=CudaAllocator.OutOfMemory"
    expect "the other allocator tests exclude it" \
      has_line "$FAKE_RECORD" "^sanitizer .*allocator_test --gtest_color=no --gtest_filter=CudaAllocator.\*-CudaAll"
    expect "the demo trains 2 epochs on the device" \
      has_line "$FAKE_RECORD" "^voxgrad train .* --epochs 2 --iters-per-epoch 20 --seed 0 --device cuda \("
    expect "the benchmarks run on the device" has_line "$FAKE_RECORD" "^voxgrad bench --device cuda"
    expect "the benchmarks and the demo run without VOXGRAD_CUDA_SYNC (timings stay honest)" \
      test "$(grep -c '^voxgrad .*(sync=unset)$' "$FAKE_RECORD")" -eq "$(grep -c '^voxgrad ' "$FAKE_RECORD")"
    ;;
  gpu_test_fails)
    FAKE_FAILING=conv_test run_check --budget 60
    expect "exit 1" test "$status" -eq 1
    expect "tests FAILED naming the executable and the test" \
      phase tests "FAILED +.*conv_test: 1 failed \(Fake.GpuWorks\)"
    expect "verdict FAIL" verdict FAIL
    ;;
  no_gpu_test_ran)
    FAKE_SKIP=1 run_check --budget 60 --phases tests
    expect "exit 1" test "$status" -eq 1
    expect "tests FAILED: nothing ran" phase tests "FAILED +no GPU test ran"
    expect "verdict FAIL" verdict FAIL
    ;;
  memcheck_error_in_child)
    FAKE_CHILD_ERRORS=2 run_check --budget 60
    expect "exit 1" test "$status" -eq 1
    expect "tests passed" phase tests passed
    expect "memcheck FAILED counting the child's summary" phase memcheck "FAILED +train_cli_test .*: 2 errors in 2 processes"
    expect "verdict FAIL" verdict FAIL
    ;;
  tests_over_budget)
    FAKE_SLOW=ops_test run_check --budget 20
    expect "exit 1" test "$status" -eq 1
    expect "tests timed out, naming the executable cut short" phase tests "timed out +.*; killed at the share's end: ops_test; not started: optim_test tensor_test"
    expect "the later phases keep their shares" phase memcheck passed
    expect "the demo keeps its share" phase demo passed
    expect "verdict FAIL" verdict FAIL
    expect "the budget holds (took ${took} s of 20)" test "$took" -le 25
    ;;
  memcheck_over_budget)
    FAKE_SANITIZER_SLOW=1 run_check --budget 20 --phases tests,memcheck
    expect "exit 1" test "$status" -eq 1
    expect "memcheck killed by the timeout is a failure" \
      phase memcheck "timed out +0 suites clean; killed at the share's end: tensor_test; not started: ops_test "
    expect "verdict FAIL" verdict FAIL
    expect "bench and demo skipped when not asked" has_line "$tmp/stdout" "^gpu-check: FAIL in .*bench skipped, demo skipped"
    expect "the budget holds (took ${took} s of 20)" test "$took" -le 25
    ;;
  sanitizer_refuses)
    FAKE_SANITIZER_REFUSES=1 run_check --budget 60
    expect "exit 3" test "$status" -eq 3
    expect "memcheck not run, saying why" phase memcheck "not run +compute-sanitizer unavailable here: .*Device not supported"
    expect "the sanitizer is not retried suite after suite" test "$(grep -c '^sanitizer ' "$FAKE_RECORD")" -eq 1
    expect "verdict INCOMPLETE, not PASS" verdict INCOMPLETE
    ;;
  phases_subset)
    run_check --budget 60 --phases tests,memcheck
    expect "tests and memcheck alone can pass" test "$status" -eq 0
    expect "... with bench and demo skipped" has_line "$tmp/stdout" "^gpu-check: PASS in .*bench skipped, demo skipped\)$"
    expect "... and not run" lacks_line "$FAKE_RECORD" "^voxgrad (bench|synth)"
    run_check --budget 60 --phases tests,bench
    expect "without memcheck: exit 3" test "$status" -eq 3
    expect "... INCOMPLETE, not PASS" verdict INCOMPLETE
    ;;
  payload)
    # The build machine's half on a fake build: only executables with GPU tests travel, as they are
    # while they fit; past 64 MiB they travel as one xz archive, which the check unpacks and runs.
    cp "$bin/ops_test" "$tmp/build/cpu_only_test"
    mv "$bin"/* "$tmp/build/"
    "$root/tools/gpu-check" --payload "$tmp/build" 2>"$tmp/stderr"
    expect "--payload copies voxgrad and the suites with GPU tests" \
      test "$(find "$bin" -type f | wc -l)" -eq 11 -a -x "$bin/voxgrad" -a -x "$bin/conv_test"
    expect "... not the others" test ! -e "$bin/cpu_only_test"
    expect "... as they are" has_line "$tmp/stderr" "10 test executables as they are"
    head -c $((7 * 1024 * 1024)) /dev/urandom >"$tmp/padding"
    for t in "$tmp/build"/*_test; do cat "$tmp/padding" >>"$t"; done
    "$root/tools/gpu-check" --payload "$tmp/build" 2>"$tmp/stderr"
    expect "past 64 MiB one archive travels" test "$(ls "$bin")" = payload.tar.xz
    expect "... small enough" has_line "$tmp/stderr" "in payload.tar.xz \(7[0-9].[0-9] MiB unpacked\): [0-9]\.[0-9] MiB"
    run_check --budget 60 --phases tests
    expect "the check runs the unpacked suites" phase tests "passed +20 GPU tests ran in 10 executables"
    expect "... and the unpacked voxgrad" has_line "$FAKE_RECORD" "^test conv_test .* binary=$tmp/work/[^ ]*/bin/voxgrad "
    ;;
  no_device)
    FAKE_DEVICES=0 run_check --budget 60
    expect "exit 1" test "$status" -eq 1
    expect "says so" has_line "$tmp/stdout" "voxgrad sees no CUDA device"
    expect "runs no test" lacks_line "$FAKE_RECORD" "^test "
    ;;
  no_carried_build)
    rm -rf "$tmp/build"
    mkdir -p "$tmp/build"
    run_check --budget 60
    expect "exit 1" test "$status" -eq 1
    expect "names the build machine's command" has_line "$tmp/stderr" "no carried build in .*tools/gpu-check --build"
    expect "configures nothing" test ! -e "$tmp/build/CMakeCache.txt"
    ;;
  *)
    echo "fake_device.sh: no scenario '$scenario'" >&2
    exit 2
    ;;
esac
if ((failures > 0)); then
  echo "---- gpu-check stdout" >&2
  cat "$tmp/stdout" >&2
  echo "---- gpu-check stderr (last 20 lines)" >&2
  tail -n 20 "$tmp/stderr" >&2
  exit 1
fi
echo "fake_device.sh $scenario: ok (${took:-0} s)"
