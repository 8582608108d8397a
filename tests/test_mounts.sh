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

# 13.5: UUIDLOCK_PATHS names a directory the share is mounted below, as
# users write it (/mnt, /home, /net): the share's files are managed too.
test_share_mounted_below_a_managed_directory() {
  export UUIDLOCK_PATHS=$RIG   # the clients are $RIG/c1 and $RIG/c2
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go" un:5
  held
  assertTrue "the holder made a sidecar" "[ -e '$RIG/srv/f$SFX' ]"
  assertEquals "another host sees it held" 75 "$(other_host flock -n -E 75 "$C2/f" true; echo $?)"
  release_holder
  assertEquals "holder: $(cat "$RIG/hold.out" "$RIG/hold.err")" 0 "$(grep -c ' err ' "$RIG/hold.out")"
  assertEquals "then free" 0 "$(probe "$C2/f")"
  wait_no_sidecars
}

# 13.6: a long-running program whose share is unmounted and mounted again
# (with another device number) must still make a sidecar for its next lock.
test_share_remounted_under_a_running_program() {
  local before after
  before=$(stat -c %d "$C1")
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go1" un:5 close:5 touch:"$RIG/closed" \
    wait:"$RIG/remounted" open:5:"$C1/f" ex:5 touch:"$RIG/held2" wait:"$RIG/go" un:5
  held
  assertTrue "the first lock made a sidecar" "[ -e '$RIG/srv/f$SFX' ]"
  touch "$RIG/go1"
  wait_for_file "$RIG/closed" || fail "the holder never closed"
  wait_no_sidecars
  _rig_umount "$C1" || fail "unmount $C1"
  # Another mount takes the device number (and mount id) $C1 had, so that
  # the new $C1 gets new ones, as a real remount often does.
  local pid
  _rig_mount_start "$RIG/squatter" && pid=${_RIG_FUSE_PIDS##* } && _rig_mount_wait "$RIG/squatter" "$pid" ||
    fail "mount the squatter"
  _rig_mount_start "$C1" && pid=${_RIG_FUSE_PIDS##* } && _rig_mount_wait "$C1" "$pid" || fail "remount $C1"
  _rig_umount "$RIG/squatter"
  after=$(stat -c %d "$C1")
  assertNotEquals "the remount has another device number" "$before" "$after"
  touch "$RIG/remounted"
  wait_for_file "$RIG/held2" || fail "the holder never locked again"
  assertTrue "the lock after the remount made a sidecar" "[ -e '$RIG/srv/f$SFX' ]"
  assertEquals "another host sees it held" 75 "$(other_host flock -n -E 75 "$C2/f" true; echo $?)"
  release_holder
  assertEquals "holder: $(cat "$RIG/hold.out" "$RIG/hold.err")" 0 "$(grep -c ' err ' "$RIG/hold.out")"
  wait_no_sidecars
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
