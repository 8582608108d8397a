#!/usr/bin/env bash
# A smoke run of `make bench` with tiny counts: the benchmark itself keeps
# working (and checks exclusion under contention), without timing anything.
TOP=$(cd "$(dirname "$0")/.." && pwd)

test_bench_smoke_run() {
  local out
  out=$("$TOP/bench/run.sh" --smoke 2>&1)
  local rc=$?
  assertEquals "bench/run.sh --smoke failed: $(echo "$out" | tail -n 20)" 0 $rc
  assertContains "$out" "exclusion violations: 0"
  assertContains "$out" "1. Off the share"
}

. shunit2
