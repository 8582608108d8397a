#!/usr/bin/env bash
# The uuidlock command, UUIDLOCK_PATHS=auto, diagnostics, install, man pages.
. "$(dirname "$0")/locking.sh"

UUIDLOCK=$TOP/build/uuidlock
setUp() { rig_setup; }
tearDown() { rig_teardown; }


test_run_passes_exit_status_and_options() {
  "$UUIDLOCK" run -p "$C1" --verify-delay 0.5 --timeout 3 --lease 9 --prefix ci- -- sh -c 'exit 7'
  assertEquals "exit status" 7 $?
  local env
  env=$("$UUIDLOCK" run -p "$C1" --verify-delay 0.5 --retry-interval 0.2 --timeout 3 --lease 9 --prefix ci- \
    --suffix .lck -v -- sh -c 'echo "$UUIDLOCK_PATHS|$UUIDLOCK_VERIFY_DELAY|$UUIDLOCK_RETRY_INTERVAL|$UUIDLOCK_TIMEOUT|$UUIDLOCK_LEASE|$UUIDLOCK_PREFIX|$UUIDLOCK_SUFFIX|$UUIDLOCK_LOG"')
  assertEquals "$C1|0.5|0.2|3|9|ci-|.lck|info" "$env"
  "$UUIDLOCK" run -p "$C1" -- /no/such/program 2>/dev/null
  assertEquals "missing command" 127 $?
  "$UUIDLOCK" run --verify-delay abc -- true 2>"$RIG/err"
  assertEquals "bad option value" 2 $?
  assertContains "$(cat "$RIG/err")" "uuidlock: not a number of seconds: abc"
}

# The shim resolves the managed directories at a program's first lock call;
# the command checks them before running anything.
test_run_reports_a_missing_directory_before_running() {
  "$UUIDLOCK" run -p "$C1:$RIG/no/such/dir" -- touch "$RIG/ran" 2>"$RIG/err"
  assertEquals "exit status" 2 $?
  assertFalse "the program did not run" "[ -e '$RIG/ran' ]"
  assertContains "$(cat "$RIG/err")" "uuidlock: UUIDLOCK_PATHS: \"$RIG/no/such/dir\" is invalid: No such file or directory"
  "$UUIDLOCK" run -p "$C1" --lease 0.01 -- touch "$RIG/ran" 2>"$RIG/err"
  assertEquals "a bad variable too" 2 $?
  assertContains "$(cat "$RIG/err")" "UUIDLOCK_LEASE"
}

# Every number of seconds has an upper bound (a day; a week for the lease and
# UUIDLOCK_FOREIGN_STALE), so that no deadline "now + value" can overflow:
# UUIDLOCK_VERIFY_DELAY=9223372036 was accepted and wrapped to a negative one.
check_timing_bound() {
  local var=$1 max=$2 value
  for value in $((max + 1)) 9223372036; do
    env "$var=$value" "$UUIDLOCK" run -p "$C1" -- touch "$RIG/ran" 2>"$RIG/err"
    assertEquals "$var=$value is refused" 2 $?
    assertEquals "$var=$value: one line" \
      "uuidlock: $var=\"$value\" is invalid: must be at most $max seconds; locks on managed files will fail" \
      "$(cat "$RIG/err")"
  done
  assertFalse "nothing ran" "[ -e '$RIG/ran' ]"
  env "$var=$max" "$UUIDLOCK" run -p "$C1" -- true 2>"$RIG/err"
  assertEquals "$var=$max is allowed: $(cat "$RIG/err")" 0 $?
}

test_run_refuses_timings_beyond_their_bounds() {
  check_timing_bound UUIDLOCK_VERIFY_DELAY 86400
  check_timing_bound UUIDLOCK_RETRY_INTERVAL 86400
  check_timing_bound UUIDLOCK_TIMEOUT 86400
  check_timing_bound UUIDLOCK_LEASE 604800
  check_timing_bound UUIDLOCK_FOREIGN_STALE 604800
  UUIDLOCK_TIMEOUT=-9223372036 "$UUIDLOCK" run -p "$C1" -- true
  assertEquals "any negative timeout is forever" 0 $?
  "$UUIDLOCK" break --lease 604801 "$C1/f" 2>"$RIG/err"
  assertEquals "break --lease beyond a week" 2 $?
  assertContains "$(cat "$RIG/err")" "at most a week"
}

# A sidecar of another host that claims a longer lease than any keeper allows
# is watched for a week, not a wrapped deadline: with lease=9223372036 the
# watch ended at once and `uuidlock break` broke a live holder.
test_break_bounds_a_sidecars_lease() {
  printf 'other-3f1c9a52\nuuidlock=1\nhost=x\nhost_id=other-boot/1\nkeeper_pid=1\nkeeper_start=1\npid=1\nacquired=0\nlease=9223372036.000\nheartbeat=%017d\n' \
    0 >"$RIG/srv/f$SFX"
  local before; before=$(md5sum <"$RIG/srv/f$SFX")
  "$UUIDLOCK" break "$C1/f" >"$RIG/out" 2>"$RIG/err" &
  local breaker=$!
  local i
  for i in $(seq 500); do
    grep -q 'watching' "$RIG/err" && break
    kill -0 "$breaker" 2>/dev/null || break
    sleep 0.01
  done
  assertContains "watches for a week: $(cat "$RIG/out")" "$(cat "$RIG/err")" "for 604800.0 s"
  kill "$breaker" 2>/dev/null; wait "$breaker"
  assertEquals "the sidecar is untouched" "$before" "$(md5sum <"$RIG/srv/f$SFX")"
  rm "$RIG/srv/f$SFX"
}

# UUIDLOCK_PATHS takes at most 16 directories.  More is one line at start-up
# (it was one line per extra directory) and every lock call fails.
test_more_than_16_directories_are_reported_once() {
  local i dirs=$C1
  for i in $(seq 15); do mkdir "$RIG/d$i" && dirs+=":$RIG/d$i"; done
  assertContains "16 work" "$(UUIDLOCK_PATHS=$dirs LD_PRELOAD=$SHIM_PRELOAD "$LOCKDRV" open:5:"$C1/f" ex:5 un:5 2>&1)" \
    "ex:5 ok"
  for i in $(seq 16 20); do mkdir "$RIG/d$i" && dirs+=":$RIG/d$i"; done
  local out
  out=$(UUIDLOCK_PATHS=$dirs LD_PRELOAD=$SHIM_PRELOAD "$LOCKDRV" open:5:"$C1/f" ex:5 open:6:"$RIG/d1/g" ex:6 2>"$RIG/err")
  assertContains "a managed file" "$out" "ex:5 err ENOLCK"
  assertContains "any file" "$out" "ex:6 err ENOLCK"
  assertEquals "one line" \
    "uuidlock: UUIDLOCK_PATHS: 21 directories, more than the 16 supported; all lock calls will fail" "$(cat "$RIG/err")"
  "$UUIDLOCK" run -p "$dirs" -- touch "$RIG/ran" 2>"$RIG/err"
  assertEquals "uuidlock run refuses" 2 $?
  assertEquals "uuidlock run: one line" 1 "$(wc -l <"$RIG/err")"
  assertFalse "nothing ran" "[ -e '$RIG/ran' ]"
}

test_run_stacks_with_an_existing_preload_and_never_searches_cwd() {
  local other
  other=$(ldconfig -p | awk '/libuuid\.so\.1 .*x86-64/ { print $NF; exit }')
  mkdir "$RIG/cwd" && cp "$SHIM" "$RIG/cwd/libuuidlock_shim.so"
  local preload
  preload=$(cd "$RIG/cwd" && LD_PRELOAD=$other "$UUIDLOCK" run -p "$C1" -- sh -c 'echo "$LD_PRELOAD"')
  assertEquals "ours first, then the existing one" "$SHIM $other" "$preload"
}

test_run_protects_a_program() {
  "$UUIDLOCK" run -p "$C1:$C2" -- flock "$C1/f" sh -c 'touch "$1/held"; while [ ! -e "$1/go" ]; do sleep 0.01; done' \
    sh "$RIG" &
  local holder=$!
  held
  "$UUIDLOCK" run -p "$C1:$C2" -- flock -n "$C2/f" true
  assertEquals "the other client is kept out" 1 $?
  touch "$RIG/go"; wait $holder
}

test_status_free_held_dead_and_foreign() {
  "$UUIDLOCK" status "$C1/f" >"$RIG/out"
  assertEquals "free: exit 0" 0 $?
  assertEquals "$C1/f: free" "$(cat "$RIG/out")"

  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  "$UUIDLOCK" status "$C1/f" >"$RIG/out"
  assertEquals "held: exit 1" 1 $?
  assertContains "$(cat "$RIG/out")" "held by host $(hostname)"
  assertContains "$(cat "$RIG/out")" "pid $HOLDER"
  assertContains "$(cat "$RIG/out")" "holder alive"
  "$UUIDLOCK" status --json "$C1/f" "$C1/g" >"$RIG/json"
  assertEquals "json" "held alive free" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d[0]["state"], d[0]["holder"], d[1]["state"])' "$RIG/json")"

  kill_keeper_and_holder
  assertContains "a dead keeper's sidecar" "$("$UUIDLOCK" status "$C1/f")" "holder dead"
  rm "$RIG/srv/f$SFX"
  printf 'someone-3f1c9a52' >"$RIG/srv/f$SFX"
  assertContains "$("$UUIDLOCK" status "$C1/f")" "foreign format"
}

test_break_refuses_live_clears_dead_and_forces_foreign() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  "$UUIDLOCK" break "$C1/f" 2>"$RIG/err"
  assertEquals "refuses a live holder" 1 $?
  assertContains "$(cat "$RIG/err")" "is alive on this host"
  assertTrue "still there" "[ -e '$RIG/srv/f$SFX' ]"

  kill_keeper_and_holder
  assertContains "$("$UUIDLOCK" break "$C1/f")" "broke $C1/f$SFX (its keeper on this host is gone)"
  assertFalse "gone" "[ -e '$RIG/srv/f$SFX' ]"

  printf 'someone-3f1c9a52' >"$RIG/srv/f$SFX"
  "$UUIDLOCK" break "$C1/f" 2>/dev/null
  assertEquals "refuses a foreign one" 1 $?
  "$UUIDLOCK" break --force "$C1/f" 2>"$RIG/err" >/dev/null
  assertEquals "forced" 0 $?
  assertContains "$(cat "$RIG/err")" "warning"
  assertFalse "gone" "[ -e '$RIG/srv/f$SFX' ]"
}

# One line per FILE: the break is judged and done once.
test_break_reports_once() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  kill_keeper_and_holder
  assertEquals "$C1/f: broke $C1/f$SFX (its keeper on this host is gone)" "$("$UUIDLOCK" break "$C1/f")"
}

test_break_clears_a_half_written_sidecar() {
  printf 'cut-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77\n' >"$RIG/srv/f$SFX"
  assertContains "$("$UUIDLOCK" status "$C1/f")" "held, half-written"
  assertContains "$("$UUIDLOCK" break --lease 0.5 "$C1/f" 2>"$RIG/err")" "half-written"
  assertFalse "gone: $(cat "$RIG/err")" "[ -e '$RIG/srv/f$SFX' ]"
  printf 'someone-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77' >"$RIG/srv/f$SFX"
  "$UUIDLOCK" break --lease 0.5 "$C1/f" 2>/dev/null
  assertEquals "uuid-filelock's (no newline) is refused" 1 $?
}

# --force against a live holder on another host: its heartbeat moves while
# we watch, and the break compares with what was seen last.
test_break_force_breaks_a_live_holder_on_another_host() {
  (UUIDLOCK_LEASE=0.6 other_host "$LOCKDRV" open:5:"$C2/f" ex:5 touch:"$RIG/held" wait:"$RIG/go" \
    >"$RIG/hold.out" 2>"$RIG/hold.err") &
  HOLDER=$!
  held
  local out
  out=$("$UUIDLOCK" break --force --lease 0.6 "$C1/f" 2>"$RIG/err")
  assertEquals "forced: $(cat "$RIG/err")" 0 $?
  assertContains "$out" "broke $C1/f$SFX (forced)"
  touch "$RIG/go"; wait "$HOLDER"
}

# auto: files on FUSE are managed, files on a local filesystem are not.
test_auto_manages_network_and_fuse_filesystems_only() {
  mkdir "$RIG/local"
  UUIDLOCK_PATHS=auto LD_PRELOAD=$SHIM_PRELOAD "$LOCKDRV" open:5:"$C1/f" open:6:"$RIG/local/f" ex:5 ex:6 \
    touch:"$RIG/held" wait:"$RIG/go" >/dev/null &
  local holder=$!
  held
  assertTrue "a sidecar for the FUSE file" "[ -e '$RIG/srv/f$SFX' ]"
  assertFalse "none for the local file" "[ -e '$RIG/local/f$SFX' ]"
  UUIDLOCK_PATHS=auto shimmed flock -n "$C2/f" true
  assertEquals "auto excludes across clients" 1 $?
  touch "$RIG/go"; wait $holder
}

test_log_lines_and_log_file() {
  UUIDLOCK_LOG=info UUIDLOCK_LOG_FILE=$RIG/uuidlock.log shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 un:5 >/dev/null 2>"$RIG/err"
  assertContains "$(cat "$RIG/uuidlock.log")" "uuidlock: locked $C1/f$SFX"
  assertContains "$(cat "$RIG/uuidlock.log")" "uuidlock: unlocked descriptor 5"
  assertEquals "nothing on stderr" "" "$(cat "$RIG/err")"
}

test_long_wait_says_who_holds_the_lock() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  shimmed flock -w 6 "$C2/f" true 2>"$RIG/err"
  assertContains "$(cat "$RIG/err")" "uuidlock: waiting 5 s so far for $C2/f$SFX, held by:"
  assertContains "$(cat "$RIG/err")" "pid=$HOLDER"
  touch "$RIG/go"; wait "$HOLDER"
}

test_install_and_run_the_installed_command_elsewhere() {
  make -C "$TOP" -s install PREFIX="$RIG/prefix" >/dev/null || fail "make install"
  local preload
  preload=$(cd / && "$RIG/prefix/bin/uuidlock" run -p "$C1" -- sh -c 'echo "$LD_PRELOAD"')
  assertEquals "the installed library" "$RIG/prefix/lib/uuidlock/libuuidlock_shim.so" "$preload"
  (cd / && "$RIG/prefix/bin/uuidlock" run -p "$C1:$C2" --verify-delay 0.01 -- flock "$C1/f" true)
  assertEquals "a lock through the installed library and keeper" 0 $?
  assertTrue "man page installed" "[ -f '$RIG/prefix/share/man/man7/libuuidlock_shim.7' ]"

  make -C "$TOP" -s install DESTDIR="$RIG/dest" PREFIX=/usr >/dev/null || fail "make install DESTDIR"
  assertTrue "DESTDIR layout" "[ -x '$RIG/dest/usr/bin/uuidlock' ] && [ -f '$RIG/dest/usr/lib/uuidlock/libuuidlock_shim.so' ] && [ -x '$RIG/dest/usr/lib/uuidlock/uuidlock-keeper' ] && [ -f '$RIG/dest/usr/share/man/man1/uuidlock.1' ]"
  make -C "$TOP" -s uninstall DESTDIR="$RIG/dest" PREFIX=/usr >/dev/null
  assertEquals "uninstalled" "" "$(find "$RIG/dest" -type f)"
}

test_man_pages_render_without_warnings() {
  local m out
  for m in "$TOP"/man/uuidlock.1 "$TOP"/man/libuuidlock_shim.7; do
    out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null)
    assertEquals "$m" "" "$out"
    assertTrue "$m renders" "[ \$(MANWIDTH=80 man -l '$m' 2>/dev/null | wc -l) -gt 40 ]"
  done
}

test_help_and_version() {
  assertContains "$("$UUIDLOCK" --help)" "usage: uuidlock run"
  assertContains "$("$UUIDLOCK" --version)" "uuidlock "
  "$UUIDLOCK" frobnicate 2>"$RIG/err"
  assertEquals 2 $?
  assertContains "$(cat "$RIG/err")" "unknown command"
}

. shunit2
