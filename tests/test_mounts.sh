#!/usr/bin/env bash
# Mounts as real machines have them: a share unmounted or remounted under a
# running program, shares mounted below a managed directory, hard links,
# clients that cache attributes.  Each case once let two hosts hold a lock
# (issue 13).
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; EXTRA_MOUNTS=(); }
tearDown() {
  local m
  for m in "${EXTRA_MOUNTS[@]}"; do _rig_umount "$m"; done
  rig_teardown
}

# sshfs_client DIR [OPTIONS]: a third sshfs client of the share, mounted with
# sshfs's and FUSE's defaults plus OPTIONS (the rig's own turn all caches off).
sshfs_client() {
  local pid
  [ -d "$RIG/ssh" ] || _rig_ssh_prepare || return 1
  mkdir -p "$1"
  pid=$(env -u UUIDLOCK_RIG sshfs -f -F "$RIG/ssh/ssh_config" ${2:+-o "$2"} "rig:$RIG/srv" "$1" \
          </dev/null >>"$RIG/sshfs.log" 2>&1 & echo $!)
  _RIG_FUSE_PIDS+=" $pid" EXTRA_MOUNTS+=("$1")
  _rig_mount_wait "$1" "$pid"
}

# grow CLIENTDIR N: N times, under flock on one long-lived descriptor, read
# the whole of CLIENTDIR/g and append the next line number at its end.  A
# stale size (cached attributes) makes it write over another client's line.
grow() {
  python3 - "$1/g" "$2" <<'PY'
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for _ in range(int(sys.argv[2])):
    fcntl.flock(fd, fcntl.LOCK_EX)
    data = b""
    while True:
        chunk = os.pread(fd, 65536, len(data))
        if not chunk:
            break
        data += chunk
    os.pwrite(fd, b"%d\n" % (len(data.splitlines()) + 1), len(data))
    os.fsync(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
PY
}

# grow_from_two_hosts DIR1 DIR2: 2 x 40 appends, one host on each client.
grow_from_two_hosts() {
  : >"$RIG/srv/g"
  (LD_PRELOAD=$SHIM_PRELOAD grow "$1" 40 2>"$RIG/grow1.err") & local a=$!
  # shellcheck disable=SC2016 # expanded by the inner bash
  (export -f grow; other_host bash -c 'grow "$1" 40' sh "$2" 2>"$RIG/grow2.err") & local b=$!
  wait "$a"; assertEquals "host 1: $(cat "$RIG/grow1.err")" 0 $?
  wait "$b"; assertEquals "host 2: $(cat "$RIG/grow2.err")" 0 $?
}

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

# check_lock_after_remount : the holder started by a remount test (lockdrv
# waiting on $RIG/remounted) locks again after the remount: that lock must
# make a sidecar that another host sees, and nothing may fail.
check_lock_after_remount() {
  touch "$RIG/remounted"
  wait_for_file "$RIG/held2" || fail "the holder never locked again"
  assertTrue "the lock after the remount made a sidecar" "[ -e '$RIG/srv/f$SFX' ]"
  assertEquals "another host sees it held" 75 "$(other_host flock -n -E 75 "$C2/f" true; echo $?)"
  release_holder
  assertEquals "holder: $(cat "$RIG/hold.out" "$RIG/hold.err")" 0 "$(grep -c ' err ' "$RIG/hold.out")"
  wait_no_sidecars
}

# mount_client DIR : one more client of the rig's share at DIR, as rig.sh mounts them.
mount_client() {
  local pid
  _rig_mount_start "$1" && pid=${_RIG_FUSE_PIDS##* } && _rig_mount_wait "$1" "$pid"
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
  EXTRA_MOUNTS+=("$RIG/squatter")
  mount_client "$RIG/squatter" || fail "mount the squatter"
  mount_client "$C1" || fail "remount $C1"
  _rig_umount "$RIG/squatter"
  after=$(stat -c %d "$C1")
  # Not asserted: others' mounts on this machine may take the numbers first.
  [ "$before" != "$after" ] || _rig_log "(the remount got the old device number back)"
  check_lock_after_remount
}

# 13.6, the worst case: the share comes back with the numbers (mount id and
# device) of an unmanaged mount the program saw, now gone.  Linux hands out
# the lowest free ones, so this is what a remount often gets.
test_share_remounted_with_an_old_unmanaged_mounts_numbers() {
  local decoy after
  EXTRA_MOUNTS+=("$RIG/decoy" "$RIG/squatter")
  mount_client "$RIG/decoy" || fail "mount the decoy"
  decoy=$(stat -c %d "$RIG/decoy")
  hold open:5:"$C1/f" ex:5 un:5 close:5 touch:"$RIG/closed" \
    wait:"$RIG/remounted" open:5:"$C1/f" ex:5 touch:"$RIG/held2" wait:"$RIG/go" un:5
  wait_for_file "$RIG/closed" || fail "the holder never locked"
  wait_no_sidecars
  _rig_umount "$C1" || fail "unmount $C1"
  mount_client "$RIG/squatter" || fail "mount the squatter"
  _rig_umount "$RIG/decoy"   # frees the numbers the holder knows as unmanaged
  mount_client "$C1" || fail "remount $C1"
  _rig_umount "$RIG/squatter"
  after=$(stat -c %d "$C1")
  [ "$decoy" = "$after" ] || _rig_log "(the remount did not get the decoy's device number)"
  check_lock_after_remount
}

# 13.2: FUSE caches attributes (attr_timeout, 1 s by default): after taking
# a lock the client must ask the server for the file's size and mtime.
test_attribute_cache_is_revalidated_after_locking() {
  sshfs_client "$RIG/c3" dir_cache=no && sshfs_client "$RIG/c4" dir_cache=no || fail "mount"
  export UUIDLOCK_PATHS=$RIG/c3:$RIG/c4
  grow_from_two_hosts "$RIG/c3" "$RIG/c4"
  assertEquals "every update kept" "$(seq 80)" "$(cat "$RIG/srv/g")"
  assertNotContains "no warning: sshfs's cache is off" "$(cat "$RIG/grow1.err")" "uuidlock:"
}

# 13.2: sshfs's own cache (on by default) can't be revalidated by any call:
# the first lock on such a mount says so, and so does `uuidlock run`.
test_sshfs_own_cache_is_reported() {
  sshfs_client "$RIG/c3" && sshfs_client "$RIG/c4" || fail "mount"
  export UUIDLOCK_PATHS=$RIG/c3:$RIG/c4
  grow_from_two_hosts "$RIG/c3" "$RIG/c4"
  local said="uuidlock: $RIG/c3 is an sshfs mount with sshfs's own cache on"
  assertEquals "one warning per process: $(cat "$RIG/grow1.err")" 1 "$(grep -c "^$said" "$RIG/grow1.err")"
  assertContains "it names the options" "$(cat "$RIG/grow1.err")" "-o dir_cache=no"
  assertContains "uuidlock run too" "$("$TOP/build/uuidlock" run -p "$RIG" true 2>&1)" \
    "$RIG/c4 is an sshfs mount with sshfs's own cache on"
  assertNotContains "not for the rig's clients" "$("$TOP/build/uuidlock" run -p "$C1" true 2>&1)" "cache on"
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

# guarded CMD ARGS... : CMD under the shim, SIGKILLed after 30 s: a process
# blocked in a FUSE request ignores SIGTERM (exit status 137 = it hung).
guarded() { timeout -s KILL 30 env LD_PRELOAD="$SHIM_PRELOAD" "$@"; }

# locked_beside_stopped_share PATHS : with the second share's daemon stopped
# (a hung sshfs, a vanished NFS server), fresh processes lock a file on $C1
# and a local file: neither may wait for the stopped share.
locked_beside_stopped_share() {
  local rc
  UUIDLOCK_PATHS=$1 UUIDLOCK_LOG=info guarded "$LOCKDRV" open:5:"$C1/f" ex:5 un:5 \
    >"$RIG/a.out" 2>"$RIG/a.err"
  rc=$?
  assertEquals "$1: the lock on $C1 ended: $(cat "$RIG/a.err")" 0 $rc
  assertEquals "$1: locked on $C1" "ex:5 ok" "$(grep '^ex:5' "$RIG/a.out")"
  assertContains "$1: through its sidecar" "$(cat "$RIG/a.err")" "uuidlock: locked $C1/f$SFX"
  UUIDLOCK_PATHS=$1 guarded flock -w 10 "$RIG/local" true 2>"$RIG/b.err"
  rc=$?
  assertEquals "$1: the lock on a local file ended: $(cat "$RIG/b.err")" 0 $rc
  wait_no_sidecars
}

# A managed directory is resolved only by a lock call it could concern: one on
# a stopped share must not stall locks elsewhere, wherever UUIDLOCK_PATHS names
# it; once the share answers again, a lock on it resolves its directory late.
test_a_stopped_share_does_not_stall_locks_elsewhere() {
  rig_second_share || fail "mount the second share"
  : >"$RIG/local"
  kill -STOP "$S2_PID"
  locked_beside_stopped_share "$C1:$C2:$S2"
  locked_beside_stopped_share "$S2:$C1:$C2"
  # A local directory that doesn't exist is still a bad configuration.
  UUIDLOCK_PATHS="$S2:$RIG/no/such/dir:$C1" guarded "$LOCKDRV" open:5:"$C1/f" ex:5 >"$RIG/a.out" 2>"$RIG/a.err"
  assertEquals "a bad directory beside: the lock fails" "ex:5 err ENOLCK" "$(grep '^ex:5' "$RIG/a.out")"
  assertContains "and says why" "$(cat "$RIG/a.err")" \
    "uuidlock: UUIDLOCK_PATHS: \"$RIG/no/such/dir\" is invalid: No such file or directory"
  # One process: a lock while $S2 is stopped, then one on $S2 once it answers.
  (UUIDLOCK_PATHS="$C1:$C2:$S2" guarded "$LOCKDRV" open:5:"$C1/f" ex:5 un:5 \
     touch:"$RIG/first" wait:"$RIG/cont" open:6:"$S2/f" ex:6 touch:"$RIG/held" wait:"$RIG/go" un:6 \
     >"$RIG/hold.out" 2>"$RIG/hold.err") &
  HOLDER=$!
  wait_for_file "$RIG/first" || fail "the holder's first lock never ended"
  kill -CONT "$S2_PID"
  touch "$RIG/cont"
  held
  assertTrue "the lock on $S2 made a sidecar" "[ -e '$RIG/srv2/f$SFX' ]"
  release_holder
  local rc=$?
  assertEquals "holder ended: $(cat "$RIG/hold.err")" 0 $rc
  assertEquals "holder: $(cat "$RIG/hold.out" "$RIG/hold.err")" 0 "$(grep -c ' err ' "$RIG/hold.out")"
}

# A share mounted inside another share lies on it: a directory named through
# the outer one is resolved by a lock on the inner one (whose files' paths
# lead through the outer), and manages it as any mount below it.
test_a_share_inside_a_managed_share_is_managed() {
  local pid
  rig_second_share || fail "mount the second share"
  mkdir -p "$RIG/srv2/inner" "$RIG/srv3" && ln -s "$S2" "$RIG/link" || fail "prepare"
  pid=$(bindfs -f -o "$_RIG_BINDFS_OPTS" "$RIG/srv3" "$S2/inner" </dev/null >>"$RIG/bindfs.log" 2>&1 & echo $!)
  _RIG_FUSE_PIDS+=" $pid" EXTRA_MOUNTS+=("$S2/inner")
  _rig_mount_wait "$S2/inner" "$pid" || fail "mount inside the second share"
  UUIDLOCK_PATHS="$C1:$RIG/link" UUIDLOCK_LOG=info guarded "$LOCKDRV" open:5:"$S2/inner/f" ex:5 un:5 \
    >"$RIG/a.out" 2>"$RIG/a.err"
  assertEquals "locked" "ex:5 ok" "$(grep '^ex:5' "$RIG/a.out")"
  assertContains "through its sidecar" "$(cat "$RIG/a.err")" "uuidlock: locked $S2/inner/f$SFX"
}

. shunit2
