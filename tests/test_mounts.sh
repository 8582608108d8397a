#!/usr/bin/env bash
# Mounts as real machines have them: a share unmounted or remounted under a
# running program, shares mounted below a managed directory, hard links,
# clients that cache attributes.  Each case once let two hosts hold a lock
# (issue 13).
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }

# 13.4: after a lazy unmount the waiter's descriptor still reaches the share,
# but "$C2/f.lock" names the empty local directory: the keeper must fail the
# waiter instead of creating the sidecar there and granting the lock.
test_waiter_on_a_lazily_unmounted_share_fails() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go" un:5
  held
  (UUIDLOCK_TIMEOUT=20 other_host "$LOCKDRV" open:5:"$C2/f" ex:5 >"$RIG/w.out" 2>"$RIG/w.err") &
  local w=$!
  wait_for_file "$RIG/srv/f$SFX.want" || fail "the waiter never asked for a turn"
  fusermount3 -u -z "$C2" || fail "lazy unmount of $C2"
  release_holder
  wait "$w"
  assertEquals "the waiter's lock fails: $(cat "$RIG/w.err")" "ex:5 err ENOLCK" "$(grep '^ex:5' "$RIG/w.out")"
  assertContains "it says why" "$(cat "$RIG/w.err")" "not on the locked file's filesystem"
  assertFalse "no sidecar in the local directory" "[ -e '$C2/f$SFX' ]"
}

. shunit2
