#!/usr/bin/env bash
# The libFuzzer targets, each for a bounded time (UUIDLOCK_FUZZ_SECONDS,
# default 20), starting from the corpus kept in tests/fuzz/corpus; new inputs
# go to build/fuzz, crashes fail the test.
TOP=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_EACH=${UUIDLOCK_FUZZ_SECONDS:-20}

run_fuzzer() {
  local name=$1 out=$TOP/build/fuzz/new-$1
  mkdir -p "$out"
  (cd "$TOP/build/fuzz" && "./fuzz_$name" -max_total_time="$SECONDS_EACH" -timeout=10 \
    "$out" "$TOP/tests/fuzz/corpus/$name" >"$TOP/build/fuzz/$name.log" 2>&1)
  local rc=$?
  echo "fuzz_$name: $(grep -E '^Done [0-9]+ runs' "$TOP/build/fuzz/$name.log")"
  assertEquals "fuzz_$name found a crash: $(tail -n 20 "$TOP/build/fuzz/$name.log")" 0 $rc
}

test_fuzz_sidecar_and_proclocks_parsers() { run_fuzzer sidecar; }
test_fuzz_configuration() { run_fuzzer config; }

. shunit2
