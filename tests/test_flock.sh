#!/usr/bin/env bash
# flock(2) through the shim on the two-client share: exclusion across
# clients, the kernel's flock semantics as programs see them, and the
# sidecar protocol's edges.
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }


test_no_lost_updates_with_shim() {
  local got
  got=$(run_counter_workload "$SHIM_PRELOAD" 100)
  assertEquals "workers failed" 0 $?
  assertEquals "lost updates with the shim" 400 "$got"
  wait_no_sidecars
}

test_nonblocking_fails_fast_and_wait_gives_up() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never locked"
  local t0=$EPOCHREALTIME
  assertEquals "flock -n through client 2 while client 1 holds" 75 "$(probe "$C2/f")"
  shimmed flock -w 1 -E 75 "$C2/f" true
  assertEquals "flock -w 1 must give up" 75 $?
  local took
  took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  assertTrue "flock -n then -w 1 took ${took}s, expected about 1s" "awk 'BEGIN { exit !($took >= 0.9 && $took < 5) }'"
  touch "$RIG/go"; wait "$HOLDER"
  assertEquals "free once the holder is gone" 0 "$(shimmed flock -w 5 -E 75 "$C2/f" true; echo $?)"
  wait_no_sidecars
}

# ( flock -x 9; ... ) 9>file: the lock belongs to the subshell's open file
# description and outlives flock(1) itself.
test_shell_idiom_lock_outlives_flock_command() {
  (
    shimmed flock -x 9 || exit 1
    touch "$RIG/held"
    wait_for_file "$RIG/go" 30
  ) 9>"$C1/f" &
  local sub=$!
  wait_for_file "$RIG/held" || fail "subshell never locked"
  assertFalse "flock(1) has exited" "pgrep -f 'flock -x 9' >/dev/null"
  assertEquals "still held after flock(1) exited" 75 "$(probe "$C2/f")"
  touch "$RIG/go"; wait "$sub"
  assertEquals "free once the subshell ended" 0 "$(shimmed flock -w 5 -E 75 "$C2/f" true; echo $?)"
  wait_no_sidecars
}

# Each way of ending a lock releases it across clients by the time the call
# returns; a dup'd copy keeps it.
check_release() {
  rm -f "$RIG/held" "$RIG/released" "$RIG/go" "$RIG/end"
  hold open:5:"$C1/f" open:6:"$RIG/srv/other" ex:5 touch:"$RIG/held" wait:"$RIG/go" \
    "$@" touch:"$RIG/released" wait:"$RIG/end"
  wait_for_file "$RIG/held" || fail "holder never locked"
  assertEquals "$*: held before" 75 "$(probe "$C2/f")"
  touch "$RIG/go"
  wait_for_file "$RIG/released" || fail "$*: never got past the release"
  assertEquals "$*: free right after the call returned" 0 "$(probe "$C2/f")"
  touch "$RIG/end"; wait "$HOLDER"
  grep -q ' err ' "$RIG/hold.out" && fail "$*: $(grep ' err ' "$RIG/hold.out")"
}

test_release_by_unlock_close_dup2_closerange_closefrom_fclose() {
  check_release un:5
  check_release close:5
  check_release fclose:5
  check_release dup2:6:5
  check_release dup3:6:5
  check_release closerange:5:5
  check_release closefrom:5
  wait_no_sidecars
}

test_dup_shares_the_lock() {
  hold open:5:"$C1/f" ex:5 dup:5:7 close:5 touch:"$RIG/held" wait:"$RIG/go" \
    close:7 touch:"$RIG/released" wait:"$RIG/end"
  wait_for_file "$RIG/held" || fail "holder never locked"
  assertEquals "the dup still holds after closing the original" 75 "$(probe "$C2/f")"
  touch "$RIG/go"
  wait_for_file "$RIG/released" || fail "never closed the dup"
  assertEquals "closing the last copy releases" 0 "$(probe "$C2/f")"
  touch "$RIG/end"; wait "$HOLDER"
}

test_two_opens_in_one_process_conflict_and_conversion_works() {
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" open:6:"$C1/f" ex:5 exnb:6 un:5 sh:6 ex:6 sh:6 un:6)
  assertContains "$out" "exnb:6 err EAGAIN"
  assertContains "$out" "sh:6 ok"
  assertContains "$out" "ex:6 ok"
  assertNotContains "$out" "un:6 err"
}

test_a_busy_client_gives_a_waiting_client_its_turn() {
  check_turn ex:5 un:5
}

# While its host gives the lock up, a process that already holds it may
# still convert it (a newcomer waits without its kernel lock, so it can't
# block the conversion): no deadlock.
test_a_holder_can_convert_while_its_client_gives_the_lock_up() {
  hold open:5:"$C1/f" sh:5 touch:"$RIG/held" wait:"$RIG/go" ex:5 touch:"$RIG/converted" un:5
  held
  local t0=$EPOCHREALTIME
  shimmed "$LOCKDRV" open:5:"$C2/f" ex:5 touch:"$RIG/w_held" un:5 >"$RIG/w.out" 2>&1 &
  local w=$!
  wait_for_file "$RIG/srv/f$SFX.want" || fail "W never asked for a turn"
  until between "$(elapsed_since "$t0")" 0.1 1e9; do sleep 0.01; done
  shimmed "$LOCKDRV" open:5:"$C1/f" touch:"$RIG/b_asks" sh:5 touch:"$RIG/b_held" un:5 >"$RIG/b.out" 2>&1 &
  local b=$!
  wait_for_file "$RIG/b_asks" || fail "B never started"
  touch "$RIG/go"
  wait_for_file "$RIG/converted" || fail "the holder's conversion never completed (deadlock?)"
  wait "$HOLDER"
  wait "$w" "$b"
  assertContains "$(cat "$RIG/hold.out")" "ex:5 ok"
  assertContains "$(cat "$RIG/w.out")" "ex:5 ok"
  assertContains "$(cat "$RIG/b.out")" "sh:5 ok"
  wait_no_sidecars
}

test_signal_interrupts_a_blocking_wait() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never locked"
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C2/f" alarm:1 ex:5)
  assertContains "$out" "ex:5 err EINTR"
  touch "$RIG/go"; wait "$HOLDER"
  assertEquals "free afterwards" 0 "$(shimmed flock -w 5 -E 75 "$C2/f" true; echo $?)"
  wait_no_sidecars
}

test_timeout_gives_enolck_and_says_why() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never locked"
  local out
  out=$(UUIDLOCK_TIMEOUT=0.5 shimmed "$LOCKDRV" open:5:"$C2/f" ex:5 2>"$RIG/err")
  assertContains "$out" "ex:5 err ENOLCK"
  assertContains "$(cat "$RIG/err")" "uuidlock: timed out waiting for $C2/f$SFX"
  touch "$RIG/go"; wait "$HOLDER"
}

test_unmanaged_files_use_the_kernel_lock_only() {
  mkdir "$RIG/local"
  hold open:5:"$RIG/local/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never locked"
  assertEquals "kernel lock excludes" 1 "$(flock -n "$RIG/local/f" true; echo $?)"
  assertEquals "no sidecar for an unmanaged file" "" "$(ls "$RIG/local" | grep lock)"
  assertFalse "no keeper started for unmanaged files" "[ -e '$UUIDLOCK_RUNTIME_DIR/keeper.sock' ]"
  touch "$RIG/go"; wait "$HOLDER"
}

test_foreign_sidecar_is_respected() {
  # uuid-filelock's format: prefix + uuid, no newline.
  printf 'other-host-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77' >"$RIG/srv/f$SFX"
  local before
  before=$(md5sum <"$RIG/srv/f$SFX")
  assertEquals "held by the foreign sidecar" 75 "$(probe "$C1/f")"
  shimmed flock -w 0.3 -E 75 "$C2/f" true
  assertEquals "a blocking wait waits" 75 $?
  assertEquals "the foreign sidecar is untouched" "$before" "$(md5sum <"$RIG/srv/f$SFX")"
  rm "$RIG/srv/f$SFX"
  assertEquals "free once it is gone" 0 "$(probe "$C1/f")"
}

test_garbage_and_huge_sidecars_are_held_by_someone_else() {
  head -c 3000000 /dev/urandom >"$RIG/srv/f$SFX"
  local before
  before=$(md5sum <"$RIG/srv/f$SFX")
  assertEquals "a huge garbage sidecar holds" 75 "$(probe "$C1/f")"
  assertEquals "untouched" "$before" "$(md5sum <"$RIG/srv/f$SFX")"
  : >"$RIG/srv/f$SFX"
  assertEquals "an empty sidecar holds" 75 "$(probe "$C1/f")"
}

test_sidecar_names_its_holder() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never locked"
  local first
  first=$(head -n 1 "$RIG/srv/f$SFX")
  assertTrue "first line is a UUID: $first" \
    "[[ '$first' =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]]"
  assertContains "$(cat "$RIG/srv/f$SFX")" "pid=$HOLDER"
  assertContains "$(cat "$RIG/srv/f$SFX")" "host=$(hostname)"
  touch "$RIG/go"; wait "$HOLDER"
}

test_prefix_and_suffix() {
  UUIDLOCK_PREFIX=build-42- UUIDLOCK_SUFFIX=.lck shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 \
    touch:"$RIG/held" wait:"$RIG/go" >/dev/null &
  HOLDER=$!
  wait_for_file "$RIG/held" || fail "holder never locked"
  assertTrue "sidecar uses the suffix" "[ -e '$RIG/srv/f.lck' ]"
  assertContains "$(head -n 1 "$RIG/srv/f.lck")" "build-42-"
  touch "$RIG/go"; wait "$HOLDER"
}

# Bad configuration: one "uuidlock:" line naming the variable, and lock calls
# on (possibly) managed files fail with ENOLCK instead of running unprotected.
check_bad_config() {
  local var=$1 value=$2 file=${3:-$C1/f} out
  out=$(env "$var=$value" LD_PRELOAD="$SHIM_PRELOAD" "$LOCKDRV" open:5:"$file" ex:5 2>"$RIG/err")
  assertContains "$var=$value: lock must fail" "$out" "ex:5 err ENOLCK"
  assertContains "$var=$value: diagnostic" "$(cat "$RIG/err")" "uuidlock: "
  assertContains "$var=$value: names the variable" "$(cat "$RIG/err")" "$var"
}

test_bad_configuration_is_loud_and_safe() {
  check_bad_config UUIDLOCK_VERIFY_DELAY abc
  check_bad_config UUIDLOCK_VERIFY_DELAY 9223372036
  check_bad_config UUIDLOCK_RETRY_INTERVAL -1
  check_bad_config UUIDLOCK_TIMEOUT 1,5
  check_bad_config UUIDLOCK_PREFIX $'two\nlines'
  check_bad_config UUIDLOCK_SUFFIX a/b
  check_bad_config UUIDLOCK_LOG loud
  check_bad_config UUIDLOCK_PATHS relative/dir "$RIG/srv/any"
  check_bad_config UUIDLOCK_PATHS /no/such/dir "$RIG/srv/any"
}

test_share_refusing_the_sidecar_gives_enolck() {
  local long
  long=$(printf 'x%.0s' $(seq 252))
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/$long" ex:5 2>"$RIG/err")
  assertContains "$out" "ex:5 err ENOLCK"
  assertContains "$(cat "$RIG/err")" "uuidlock: "
  assertContains "names the sidecar" "$(cat "$RIG/err")" "cannot create sidecar $C1/$long$SFX: "
  hold open:5:"$C1/$long" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  wait_for_file "$RIG/held" || fail "holder never ran"
  assertEquals "the kernel lock was given back" 0 "$(flock -n -E 75 "$C1/$long" true; echo $?)"
  touch "$RIG/go"; wait "$HOLDER"
}

# The sidecar is named after the file: a file deleted (or replaced) while open
# can't be locked across clients, so the call fails instead.
test_deleted_file_is_refused() {
  local out by
  for by in "$C1" "$C2"; do
    out=$(shimmed "$LOCKDRV" open:5:"$C1/f" rm:"$by/f" ex:5 2>"$RIG/err")
    assertContains "deleted through $by" "$out" "ex:5 err ENOLCK"
    assertContains "deleted through $by" "$(cat "$RIG/err")" "uuidlock: "
    assertEquals "no sidecar named after the deleted file" "" "$(ls "$RIG/srv")"
  done
}

# Another library's constructor may lock before ours has run, in either
# preload order: the shim resolves libc and reads its configuration lazily.
test_a_library_constructor_can_lock_before_ours() {
  local order out
  for order in "$SHIM_PRELOAD $TOP/build/early_lock.so" "$TOP/build/early_lock.so $SHIM_PRELOAD"; do
    rm -f "$RIG/held"
    out=$(EARLY_LOCK_FILE=$C1/f LD_PRELOAD=$order "$LOCKDRV" touch:"$RIG/held" wait:"$RIG/go" 2>&1 &
      held; echo "probe $(probe "$C2/f")"; touch "$RIG/go"; wait)
    assertContains "$order" "$out" "early lock ok"
    assertContains "$order: the early lock is held across clients" "$out" "probe 75"
    rm -f "$RIG/go"
    wait_no_sidecars
  done
}

# Wrappers leave errno alone when a call succeeds, on every path.
test_errno_is_preserved() {
  mkdir "$RIG/local"
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 sh:5 dup:5:7 close:7 un:5 exnb:5 setlk:5:w:0:10 getlk:5:r:0:0 \
    setlk:5:u:0:0 lockf:5:tlock:0 lockf:5:ulock:0 dup2:5:8 dup3:5:9 closerange:8:9 fclose:5 \
    open:6:"$RIG/local/f" ex:6 setlk:6:w:0:0 close:6 getlk:5:x:0:0)
  assertNotContains "$out" "errno-changed"
  assertContains "a failing F_GETLK fails" "$out" "getlk:5:x:0:0 err EBADF"
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" getlk:5:x:0:0)
  assertContains "an invalid F_GETLK on a managed file fails" "$out" "getlk:5:x:0:0 err EINVAL"
}

test_runtime_dir_must_be_private() {
  chmod 0755 "$UUIDLOCK_RUNTIME_DIR"
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 2>"$RIG/err")
  assertContains "$out" "ex:5 err ENOLCK"
  assertContains "$(cat "$RIG/err")" "mode 0700"
  chmod 0700 "$UUIDLOCK_RUNTIME_DIR"
}

. shunit2
