#!/usr/bin/env bash
# The rig's own controls; needs no shim. If these fail, no other suite's
# result means anything.
# shellcheck source=tests/rig.sh
. "$(dirname "$0")/rig.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }

# Without the shim, util-linux flock does not exclude across the two clients,
# so the counter must lose updates: a broken shim can't pass as a working one.
test_counter_loses_updates_without_shim() {
  local got
  got=$(run_counter_workload "" 200)
  assertTrue "workers failed" $?
  assertTrue "counter is not a number: '$got'" "[ '$got' -ge 0 ] 2>/dev/null"
  assertTrue "expected lost updates (< 800), got $got" "[ '$got' -lt 800 ]"
  echo "counter without shim: $got of 800"
}

# Two lock domains: a flock held through C1 blocks C1 but not C2.
test_two_lock_domains() {
  echo >"$C1/f"
  # shellcheck disable=SC2016 # expanded by the inner sh
  flock "$C1/f" sh -c 'touch "$1/held"; while [ ! -e "$1/release" ]; do sleep 0.01; done' \
    sh "$RIG" &
  local holder=$!
  wait_for_file "$RIG/held" || fail "holder never took the lock"

  flock -n -E 75 "$C2/f" true
  assertEquals "flock via C2 must not see C1's lock" 0 $?
  flock -n -E 75 "$C1/f" true
  assertEquals "flock via C1 must be blocked by C1's lock" 75 $?

  touch "$RIG/release"
  wait "$holder"
  assertEquals "holder exit status" 0 $?
}

# rig_teardown leaves no mount and no process behind, even with a busy mount,
# a job, an orphaned daemon and a "keeper" pid file; and it is idempotent.
test_teardown_leaves_nothing() {
  local rig=$RIG fuse=$_RIG_FUSE_PIDS job orphan keeper
  (cd "$C1" && exec sleep 300) &          # a job, cwd on the mount (busy)
  job=$!
  orphan=$( (cd "$C2" && exec setsid sleep 300 </dev/null >/dev/null 2>&1) & echo $!)
  keeper=$(sleep 300 >/dev/null 2>&1 & echo $!)
  echo "$keeper" >"$UUIDLOCK_RUNTIME_DIR/keeper.pid"

  rig_teardown
  assertTrue "teardown failed" $?
  rig_teardown
  assertTrue "second teardown failed" $?

  assertFalse "mounts left" "grep -q '$rig' /proc/mounts"
  assertFalse "rig dir left" "[ -e '$rig' ]"
  local p
  for p in $fuse $job $orphan $keeper; do
    assertFalse "process $p left" "_rig_alive $p"
  done
}

# shellcheck disable=SC1091
. shunit2
