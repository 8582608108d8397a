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

# 13.9: one file with two names would get two sidecars, so two holders.
# bindfs passes the real link count through (sshfs always says 1: a limit).
test_hard_linked_file_is_refused() {
  [ "${UUIDLOCK_TEST_SHARE:-bindfs}" = bindfs ] || { startSkipping; return; }
  echo data >"$RIG/srv/f" && ln "$RIG/srv/f" "$RIG/srv/g"
  shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 >"$RIG/a.out" 2>"$RIG/a.err"
  assertEquals "a lock through one name fails" "ex:5 err ENOLCK" "$(grep '^ex:5' "$RIG/a.out")"
  assertContains "it says why" "$(cat "$RIG/a.err")" "uuidlock: refusing to lock $C1/f: it has 2 hard links"
  shimmed "$LOCKDRV" open:5:"$C2/g" exnb:5 >"$RIG/b.out" 2>&1
  assertEquals "and through the other" "exnb:5 err ENOLCK" "$(grep '^exnb:5' "$RIG/b.out")"
  assertFalse "no sidecar made" "[ -e '$RIG/srv/f$SFX' ] || [ -e '$RIG/srv/g$SFX' ]"
  rm "$RIG/srv/g"
  shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 >"$RIG/c.out" 2>&1
  assertEquals "one name again: locked" "ex:5 ok" "$(grep '^ex:5' "$RIG/c.out")"
}

. shunit2
