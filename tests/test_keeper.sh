#!/usr/bin/env bash
# The keeper in its environment: a runtime directory removed under it, one
# squatted by another user, a low descriptor limit and idle connections, the
# working directory it was started in, a runtime directory shared with a
# container (another pid namespace), a share that stops answering.
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; TEST_UID=; }
tearDown() {
  local d
  if [ -n "$TEST_UID" ]; then
    for d in /tmp/uuidlock-"$TEST_UID" /tmp/uuidlock-"$TEST_UID"-*; do
      [ -r "$d/keeper.pid" ] && _rig_kill 5 "$(cat "$d/keeper.pid")"
      rm -rf "$d"
    done
  fi
  rig_teardown
}

# wait_for_line FILE TEXT: until FILE has a line containing TEXT (10 s at most).
wait_for_line() {
  local i
  for i in $(seq 1000); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.01
  done
  return 1
}

# keeper_cpu_ticks PID: user + system time so far, in clock ticks.
keeper_cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

test_runtime_dir_removed_under_a_live_keeper() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  local first; first=$(keeper_pid)
  rm -rf "$UUIDLOCK_RUNTIME_DIR"
  # The next lock call finds no socket and starts a second keeper (unless
  # the first one has put its socket back already).
  assertEquals "a lock right after the removal" 0 "$(shimmed flock -w 10 "$C1/g" true; echo $?)"
  local second; second=$(keeper_pid)
  assertEquals "the first keeper still holds f" 75 "$(other_host flock -n -E 75 "$C2/f" true; echo $?)"
  # The same host identity, a live keeper pid: not "a dead keeper on this host".
  assertEquals "this host's new keeper respects it too" 75 "$(probe "$C2/f")"
  release_holder
  # The first keeper goes (at idle, or as here at SIGTERM: the same steps).
  if [ "$second" != "$first" ]; then
    _rig_kill 5 "$first"
    assertTrue "the second keeper's socket is left alone" "[ -S '$UUIDLOCK_RUNTIME_DIR/keeper.sock' ]"
    assertEquals "its pid file too" "$second" "$(keeper_pid)"
  fi
  local t0=$EPOCHREALTIME
  assertEquals "locks keep working" 0 "$(shimmed flock -w 10 "$C1/h" true 2>"$RIG/err"; echo $?)"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s: $(cat "$RIG/err")" "between $took 0 3"
  assertNotContains "$(cat "$RIG/err")" "uuidlock:"
  wait_no_sidecars
}

test_keeper_puts_back_a_removed_socket() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  local k; k=$(keeper_pid)
  rm -rf "$UUIDLOCK_RUNTIME_DIR"
  # No lock call meanwhile: the keeper itself notices, within seconds.
  wait_for_file "$UUIDLOCK_RUNTIME_DIR/keeper.sock" 10 || fail "the keeper never listened again"
  assertEquals "the same keeper" "$k" "$(keeper_pid)"
  wait_for_line "$UUIDLOCK_RUNTIME_DIR/keeper.log" "was removed or replaced: listening there again" ||
    fail "it says so in its new log: $(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")"
  assertEquals "and f is still held" 75 "$(other_host flock -n -E 75 "$C2/f" true; echo $?)"
  release_holder
  assertEquals "it answers" 0 "$(shimmed flock -w 10 "$C2/f" true; echo $?)"
  assertEquals "no second keeper was needed" "$k" "$(keeper_pid)"
  wait_no_sidecars
}

test_keeper_leaves_the_working_directory() {
  (cd "$C1" && shimmed flock f true) || fail "lock from a working directory on the share"
  local k; k=$(keeper_pid)
  assertEquals "the keeper's working directory" / "$(readlink "/proc/$k/cwd")"
  fusermount3 -u "$C1" 2>"$RIG/err"
  assertEquals "unmounting the share with the keeper alive: $(cat "$RIG/err")" 0 $?
}

# The grant table the keeper shares with its clients (src/core/grants.h)
# tells them when they may skip it: no client may write it, not even
# through the keeper's own descriptor.
test_the_grant_table_is_read_only_to_clients() {
  shimmed "$LOCKDRV" open:5:"$C1/f" setlk:5:w:0:1 setlk:5:u:0:0 >/dev/null || fail "lock"
  local k fd; k=$(keeper_pid)
  fd=$(find "/proc/$k/fd" -lname '/memfd:uuidlock-grants*' -printf '%f\n' | head -n 1)
  assertNotEquals "the keeper has a grant table" "" "$fd"
  assertEquals "write: EPERM, writable mapping: EPERM, read-only mapping: ok" "EPERM EPERM ok" "$(python3 - "/proc/$k/fd/$fd" <<'PY'
import errno, mmap, os, sys
f = os.open(sys.argv[1], os.O_RDWR)
def attempt(what):
    try:
        what()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(attempt(lambda: os.write(f, b"x")),
      attempt(lambda: mmap.mmap(f, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)),
      attempt(lambda: mmap.mmap(f, 4096, mmap.MAP_SHARED, mmap.PROT_READ)))
PY
)"
}

test_keeper_raises_its_descriptor_limit() {
  (ulimit -S -n 64 && shimmed flock "$C1/f" true) || fail "lock with a soft limit of 64"
  local soft hard
  read -r soft hard < <(awk '/^Max open files/ { print $4, $5 }' "/proc/$(keeper_pid)/limits")
  assertEquals "soft limit raised to the hard one" "$hard" "$soft"
}

test_idle_connections_neither_spin_nor_block_the_keeper() {
  # A hard limit of 64 too: the keeper can't raise it, and 80 connections
  # that never send anything would take every descriptor it has.
  (ulimit -n 64 && shimmed flock "$C1/f" true) || fail "lock with a limit of 64"
  local k; k=$(keeper_pid)
  python3 - "$UUIDLOCK_RUNTIME_DIR/keeper.sock" "$RIG/idle_ready" "$RIG/idle_go" <<'EOF' &
import os, socket, sys, time
conns = []
for _ in range(80):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sys.argv[1])  # blocking: waits while the backlog is full
    conns.append(s)
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
EOF
  local idle=$!
  wait_for_file "$RIG/idle_ready" 20 || fail "80 connections never made"
  local t0 c0; t0=$EPOCHREALTIME c0=$(keeper_cpu_ticks "$k")
  until between "$(elapsed_since "$t0")" 1 1e9; do sleep 0.05; done
  local used=$(( $(keeper_cpu_ticks "$k") - c0 ))
  assertTrue "the keeper used $used ticks of CPU in 1 s with 80 idle connections" "[ $used -le 20 ]"
  t0=$EPOCHREALTIME
  assertEquals "a lock call behind them" 0 "$(shimmed flock -w 60 "$C1/f" true 2>"$RIG/err"; echo $?)"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s: $(cat "$RIG/err")" "between $took 0 30"
  touch "$RIG/idle_go"; wait "$idle"
}

# Another user, by number: no passwd entry needed, nobody else uses it.
make_test_user() {
  TEST_UID=$((3000000 + $$ % 100000))
  chmod 0711 "$RIG"   # it may pass through, to its directories
  mkdir -m 0777 "$RIG/loc"
}
as_test_user() { # CMD...: under the shim as TEST_UID, managing $RIG/loc only
  env -u UUIDLOCK_RUNTIME_DIR UUIDLOCK_PATHS="$RIG/loc" \
    setpriv --reuid="$TEST_UID" --regid="$TEST_UID" --clear-groups \
    env LD_PRELOAD="$SHIM_PRELOAD" "$@"
}

test_squatted_tmp_runtime_dir_is_passed_over() {
  make_test_user
  mkdir -m 0700 "/tmp/uuidlock-$TEST_UID" && chown 65534 "/tmp/uuidlock-$TEST_UID"
  as_test_user env -u XDG_RUNTIME_DIR flock "$RIG/loc/f" true 2>"$RIG/err"
  assertEquals "a lock with its directory squatted: $(cat "$RIG/err")" 0 $?
  assertContains "the squatter is named" "$(cat "$RIG/err")" \
    "/tmp/uuidlock-$TEST_UID belongs to uid 65534, not to us: using /tmp/uuidlock-$TEST_UID-1 instead"
  assertTrue "its keeper lives there" "[ -S /tmp/uuidlock-$TEST_UID-1/keeper.sock ]"
  assertEquals "again, the same keeper" 0 "$(as_test_user env -u XDG_RUNTIME_DIR flock "$RIG/loc/f" true \
    2>/dev/null; echo $?)"
  assertEquals "one keeper" 1 "$(ls -d /tmp/uuidlock-"$TEST_UID"-* | wc -l)"
}

test_squatter_symlink_and_next_name_taken_too() {
  make_test_user
  ln -s "$RIG/loc" "/tmp/uuidlock-$TEST_UID"
  mkdir -m 0700 "/tmp/uuidlock-$TEST_UID-1" && chown 65534 "/tmp/uuidlock-$TEST_UID-1"
  as_test_user env -u XDG_RUNTIME_DIR flock "$RIG/loc/f" true 2>"$RIG/err"
  assertEquals "a lock: $(cat "$RIG/err")" 0 $?
  assertContains "$(cat "$RIG/err")" "/tmp/uuidlock-$TEST_UID belongs to uid 0 (and is no directory), not to us: using /tmp/uuidlock-$TEST_UID-2 instead"
  assertTrue "its keeper lives there" "[ -S /tmp/uuidlock-$TEST_UID-2/keeper.sock ]"
  assertFalse "nothing of it behind the symlink" "[ -e '$RIG/loc/keeper.sock' ]"
}

test_runtime_dir_defaults_to_xdg_runtime_dir() {
  make_test_user
  mkdir -m 0700 "$RIG/xdg" && chown "$TEST_UID" "$RIG/xdg"
  assertEquals "a lock" 0 "$(XDG_RUNTIME_DIR=$RIG/xdg as_test_user flock "$RIG/loc/f" true; echo $?)"
  assertTrue "the keeper lives in XDG_RUNTIME_DIR" "[ -S '$RIG/xdg/uuidlock/keeper.sock' ]"
  assertFalse "not in /tmp" "[ -e /tmp/uuidlock-$TEST_UID ]"
  # Someone else's (su keeps the variable): not ours to use.
  mkdir -m 0700 "$RIG/xdg-root"
  assertEquals "a lock" 0 "$(XDG_RUNTIME_DIR=$RIG/xdg-root as_test_user flock "$RIG/loc/g" true; echo $?)"
  assertTrue "the keeper lives in /tmp" "[ -S /tmp/uuidlock-$TEST_UID/keeper.sock ]"
}

test_runtime_dir_shared_with_a_container_gets_two_keepers() {
  # The container's process starts a keeper there first; its /proc can't
  # name the host's processes, nor list their locks.
  (UUIDLOCK_RUNTIME_DIR=$RIG/run unshare --pid --fork --kill-child --mount-proc \
    env LD_PRELOAD="$SHIM_PRELOAD" "$LOCKDRV" open:5:"$C1/g" ex:5 touch:"$RIG/ct_held" wait:"$RIG/ct_go" un:5 \
    >"$RIG/ct.out" 2>&1) &
  local ct=$!
  wait_for_file "$RIG/ct_held" || fail "the container never locked"
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  assertEquals "another host waits for the host's lock" 75 \
    "$(other_host flock -w 1 -E 75 "$C2/f" true; echo $?)"
  assertEquals "and for the container's" 75 "$(other_host flock -w 0.2 -E 75 "$C2/g" true; echo $?)"
  local pidfiles; pidfiles=$(cd "$RIG/run" && ls keeper*.pid | tr '\n' ' ')
  assertEquals "two keepers: $pidfiles" 2 "$(ls "$RIG"/run/keeper*.pid | wc -l)"
  release_holder
  touch "$RIG/ct_go"; wait "$ct"
  assertEquals "$(cat "$RIG/ct.out")" 0 "$(grep -c ' err E' "$RIG/ct.out")"
  wait_no_sidecars
}

# keeper_blocked_on_fuse PID: until a thread of PID waits for a FUSE daemon's
# answer (10 s at most).
keeper_blocked_on_fuse() {
  local i
  for i in $(seq 1000); do
    grep -qE 'fuse|request_wait_answer' /proc/"$1"/task/*/wchan 2>/dev/null && return 0
    sleep 0.01
  done
  return 1
}

# bg_lockdrv NAME [VAR=VALUE...] -- STEP...: lockdrv under the shim in the
# background, output in $RIG/NAME.out and .err; killed after 30 s whatever
# it waits for (a process in a FUSE request ignores anything but SIGKILL).
bg_lockdrv() {
  local name=$1; shift
  local env=()
  while [ "$1" != -- ]; do env+=("$1"); shift; done
  shift
  (env "${env[@]}" LD_PRELOAD="$SHIM_PRELOAD" timeout -s KILL 30 "$LOCKDRV" "$@" \
     >"$RIG/$name.out" 2>"$RIG/$name.err") &
}

test_a_stopped_share_stalls_only_its_own_locks() {
  rig_second_share || fail "no second share"
  # A short lease: the keeper heartbeats the sidecar on $S2 every 1/3 s.
  export UUIDLOCK_PATHS="$C1:$C2:$S2" UUIDLOCK_LEASE=1
  : >"$RIG/local"
  # Every process locks on a managed share before the stop: one started
  # after it would hang resolving $S2 (the shim's start-up, not the keeper).
  bg_lockdrv a -- open:5:"$S2/g" ex:5 open:6:"$C1/f" open:7:"$RIG/local" \
    touch:"$RIG/a_ready" wait:"$RIG/go" ex:6 ex:7 un:7 un:6 touch:"$RIG/a_done" wait:"$RIG/end"
  local a=$!
  bg_lockdrv b UUIDLOCK_TIMEOUT=2 -- open:5:"$C1/b" ex:5 un:5 open:6:"$S2/h" \
    touch:"$RIG/b_ready" wait:"$RIG/go" ex:5 un:5 ex:6 touch:"$RIG/b_done"
  local b=$!
  bg_lockdrv c -- open:5:"$C1/c" ex:5 un:5 open:6:"$S2/i" \
    touch:"$RIG/c_ready" wait:"$RIG/go" alarm:1 ex:6 touch:"$RIG/c_done"
  local c=$!
  wait_for_file "$RIG/a_ready" && wait_for_file "$RIG/b_ready" && wait_for_file "$RIG/c_ready" ||
    fail "the lockdrvs never got ready: $(cat "$RIG"/[abc].err)"
  local k; k=$(keeper_pid)

  kill -STOP "$S2_PID"
  keeper_blocked_on_fuse "$k" || fail "no keeper thread waits on the stopped share"
  local t0=$EPOCHREALTIME
  touch "$RIG/go"
  wait_for_file "$RIG/a_done" 20
  assertEquals "locks on the other share and a local file, from the holder" \
    "ex:6 ok ex:7 ok un:7 ok un:6 ok" "$(grep -E '^(ex|un):[67] ' "$RIG/a.out" | tr '\n' ' ' | sed 's/ $//')"
  local took; took=$(elapsed_since "$t0")
  assertTrue "the holder took ${took}s" "between $took 0 10"
  wait_for_file "$RIG/b_done" 20
  assertEquals "another process: the other share, then the stopped one with a timeout" \
    "ex:5 ok un:5 ok ex:6 err ENOLCK" "$(sed -n '/^wait:/,$p' "$RIG/b.out" | grep -E '^(ex|un):' | tr '\n' ' ' | sed 's/ $//')"
  assertContains "it says why" "$(cat "$RIG/b.err")" "uuidlock:"
  assertContains "$(cat "$RIG/b.err")" "did not answer"
  took=$(elapsed_since "$t0")
  assertTrue "its calls took ${took}s" "between $took 0 15"
  wait_for_file "$RIG/c_done" 20
  assertContains "a wait on the stopped share, interrupted" "$(cat "$RIG/c.out")" "ex:6 err EINTR"

  kill -CONT "$S2_PID"
  touch "$RIG/end"
  wait "$a" "$b" "$c"
}

. shunit2
