#!/usr/bin/env bash
# Crashes and lifecycles: a sidecar outlives its holder, so recovery must be
# quick on the same host, lease-based across hosts, and never admit two holders.
# "Another host" is a process in its own pid namespace with its own keeper
# (its own runtime directory): its host identity differs, as a machine's would.
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; EXTRA_MOUNTS=(); }
tearDown() {
  local m
  for m in "${EXTRA_MOUNTS[@]}"; do umount -l "$m" 2>/dev/null; done
  rig_teardown
}

# dead_machine_holds FILE : FILE's sidecar, as a machine that crashed while
# holding it left it: another machine's (its boot id isn't ours), lease 2 s,
# its heartbeat standing still.  Only a lease of watching breaks it.
dead_machine_holds() {
  printf 'crashed\nuuidlock=1\nhost=gone\nhost_id=another-machine/1\nkeeper_pid=1\nkeeper_start=1\npid=1\nacquired=0\nlease=2.000\nheartbeat=%017d\n' 7 \
    >"$RIG/srv/$1$SFX"
}

# SQLite only ever asks with F_SETLK and sleeps in its busy handler: its
# repeated asks must break a crashed machine's sidecar after a lease, as a
# blocking waiter does (they never did: each miss forgot what it had seen).
test_sqlite_breaks_a_crashed_machines_sidecar_after_a_lease() {
  sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode=DELETE; CREATE TABLE t(x);' >/dev/null
  dead_machine_holds db
  local t0=$EPOCHREALTIME out
  out=$(UUIDLOCK_LEASE=2 shimmed sqlite3 -cmd '.timeout 15000' "$C1/db" 'INSERT INTO t VALUES (1);' 2>&1)
  assertEquals "sqlite3 gets in: $out" "" "$out"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, a lease is 2 s" "between $took 1.5 12"
  assertEquals 1 "$(sqlite3 "$RIG/srv/db" 'SELECT count(*) FROM t;')"
}

# py-filelock polls flock(LOCK_NB): the same.  (Debian's python3 has it.)
test_polling_flock_breaks_a_crashed_machines_sidecar_after_a_lease() {
  dead_machine_holds f
  local t0=$EPOCHREALTIME
  local out
  out=$(UUIDLOCK_LEASE=2 shimmed /usr/bin/python3 -c '
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire(timeout=15, poll_interval=0.05)
print("got it")
lock.release()' "$C1/f" 2>&1)
  assertEquals "got it" "$out"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, a lease is 2 s" "between $took 1.5 12"
}

test_killed_holder_frees_the_lock_at_once_on_the_same_host() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/never"
  held
  local t0=$EPOCHREALTIME
  kill -KILL "$HOLDER"; wait "$HOLDER" 2>/dev/null
  assertEquals "a waiter on the other client gets in" 0 "$(shimmed flock -w 10 "$C2/f" true; echo $?)"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, expected well under a second" "between $took 0 1"
}

test_dead_keeper_on_the_same_host_is_broken_at_once() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/never"
  held
  local old; old=$(keeper_pid)
  kill_keeper_and_holder
  assertTrue "the dead keeper's sidecar is left behind" "[ -e '$RIG/srv/f$SFX' ]"
  local t0=$EPOCHREALTIME
  assertEquals "a new keeper breaks it" 0 "$(shimmed flock -w 10 "$C2/f" true; echo $?)"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s" "between $took 0 2"
  assertContains "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "keeper (pid $old) on this host is gone"
}

test_other_host_breaks_after_the_lease() {
  UUIDLOCK_LEASE=2 hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/never"
  held
  kill_keeper_and_holder
  local t0=$EPOCHREALTIME
  UUIDLOCK_LEASE=2 other_host flock -w 20 "$C2/f" true
  assertEquals "the other host gets in" 0 $?
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, expected the lease (2s) plus a little" "between $took 1.9 6"
}

test_live_holder_is_never_broken() {
  UUIDLOCK_LEASE=1 hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  local token; token=$(head -n 1 "$RIG/srv/f$SFX")
  UUIDLOCK_LEASE=1 other_host flock -w 3.5 -E 75 "$C2/f" true
  assertEquals "three leases later the other host still waits" 75 $?
  assertEquals "the holder's sidecar is intact" "$token" "$(head -n 1 "$RIG/srv/f$SFX")"
  touch "$RIG/go"; wait "$HOLDER"
  assertNotContains "$(cat "$RIG/hold.err")" "lost"
}

test_foreign_sidecar_breaks_only_when_opted_in() {
  printf 'someone-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77' >"$RIG/srv/f$SFX"
  UUIDLOCK_LEASE=0.5 shimmed flock -w 2 -E 75 "$C1/f" true
  assertEquals "never broken by the lease" 75 $?
  local t0=$EPOCHREALTIME
  UUIDLOCK_FOREIGN_STALE=1 shimmed flock -w 10 -E 75 "$C1/f" true
  assertEquals "broken with UUIDLOCK_FOREIGN_STALE=1" 0 $?
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s" "between $took 0.9 4"
}

# Ours, cut off between the exclusive create and the write: no heartbeat
# will ever move, so it is broken after a lease of standing still.
test_half_written_sidecar_is_broken_after_a_lease() {
  local content t0 took
  for content in '' 'cut-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77\n' \
    'cut-3f1c9a52-8f0e-4d7b-9a51-0c2f6b1e4d77\nuuidlock=1\nhost=x\nhost_id=y/1\n'; do
    wait_no_sidecars # the last flock(1) exited holding: released a retry interval later
    printf '%b' "$content" >"$RIG/srv/f$SFX"
    t0=$EPOCHREALTIME
    UUIDLOCK_LEASE=1 shimmed flock -w 10 -E 75 "$C1/f" true
    assertEquals "'$content' is broken" 0 $?
    took=$(elapsed_since "$t0")
    assertTrue "'$content': took ${took}s, expected a lease (1 s)" "between $took 0.9 5"
  done
}

# The same for a breaker's guard: a half-written F.break would block every
# later break of a dead host's sidecar.
test_half_written_guard_is_removed_after_a_lease() {
  printf 'stale\nuuidlock=1\nhost=x\nhost_id=gone/1\nkeeper_pid=1\nkeeper_start=1\npid=1\nacquired=0\nlease=1.000\nheartbeat=%017d\n' 0 \
    >"$RIG/srv/f$SFX"
  printf '' >"$RIG/srv/f$SFX.break"
  UUIDLOCK_LEASE=1 shimmed flock -w 10 -E 75 "$C1/f" true
  assertEquals "guard and dead host's sidecar broken" 0 $?
  assertContains "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "removed stale guard"
}

# cp app.db* backup/ copies the sidecar too; the copy names this host's live
# keeper, which doesn't hold it: not a lock.  (Measured against a lease of
# 5 s: the copy's heartbeat stands still, so without this it takes a lease.)
test_copy_of_a_sidecar_is_broken_at_once() {
  echo data >"$RIG/srv/f"
  UUIDLOCK_LEASE=5 hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  cp "$RIG/srv/f" "$RIG/srv/g" && cp "$RIG/srv/f$SFX" "$RIG/srv/g$SFX"
  release_holder
  local t0=$EPOCHREALTIME took
  UUIDLOCK_LEASE=5 shimmed flock -w 10 -E 75 "$C1/g" true
  assertEquals "the copy gets locked" 0 $?
  took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, expected well under the lease (5 s)" "between $took 0 2"
  assertContains "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "a copy"
}

test_sqlite_opens_a_backup_copied_while_a_writer_held_it() {
  mkdir "$RIG/srv/backup"
  shimmed sqlite3 "$C1/app.db" 'create table t(x); insert into t values(1);' || fail "create"
  LD_PRELOAD=$SHIM_PRELOAD python3 -c '
import os, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("begin immediate")
c.execute("insert into t values(2)")
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
c.execute("commit")' "$C1/app.db" "$RIG/held" "$RIG/go" &
  local writer=$!
  held
  assertTrue "the writer's sidecar is there" "[ -e '$RIG/srv/app.db$SFX' ]"
  (cd "$RIG/srv" && cp app.db* backup/)
  touch "$RIG/go"; wait $writer
  local out
  out=$(shimmed sqlite3 -cmd '.timeout 3000' "$C1/backup/app.db" 'select count(*) from t' 2>&1)
  assertEquals "the backup opens (its hot journal rolled back)" 1 "$out"
}

# Machines cloned from one snapshot share the boot id and the initial pid
# namespace: a sidecar "of this host" whose keeper this host never ran (its
# id is not in the runtime directory's record) may be live on a clone: it is
# judged by its heartbeat, never broken at once for a pid that is dead here.
test_a_clone_of_this_host_is_judged_by_its_heartbeat() {
  local host_id dead size t0 took
  host_id="$(cat /proc/sys/kernel/random/boot_id)/$(stat -L -c %i /proc/self/ns/pid)"
  sh -c 'exit 0' & dead=$!; wait $dead
  printf 'clone\nuuidlock=1\nhost=x\nhost_id=%s\nkeeper_pid=%s\nkeeper_start=1\nkeeper_id=%032d\nkeeper_dir=%s\npid=%s\nacquired=0\nlease=1.000\nheartbeat=%017d\n' \
    "$host_id" "$dead" 7 "$UUIDLOCK_RUNTIME_DIR" "$dead" 0 >"$RIG/srv/f$SFX"
  size=$(stat -c %s "$RIG/srv/f$SFX")
  # The clone's keeper beats every lease/3 or so, in place.
  (
    n=0
    while [ ! -e "$RIG/stop" ]; do
      n=$((n + 1))
      printf '%017d' $n | dd of="$RIG/srv/f$SFX" bs=1 seek=$((size - 18)) conv=notrunc status=none
      sleep 0.1
    done
    touch "$RIG/stopped"
  ) &
  UUIDLOCK_LEASE=1 shimmed flock -w 3 -E 75 "$C1/f" true
  assertEquals "three leases later the clone's live sidecar still holds" 75 $?
  assertEquals "intact" clone "$(head -n 1 "$RIG/srv/f$SFX")"
  touch "$RIG/stop"; wait_for_file "$RIG/stopped"
  t0=$EPOCHREALTIME
  UUIDLOCK_LEASE=1 shimmed flock -w 10 -E 75 "$C1/f" true
  assertEquals "once its heartbeat stops, broken after a lease" 0 $?
  took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, expected a lease (1 s)" "between $took 0.9 5"
}

# A breaker stalled after its checks: its operation on the sidecar lands
# only once another host has broken the same stale sidecar (removing the
# stalled breaker's guard after a lease) and holds the lock.  It must not
# take that new holder's sidecar away: never two holders (exclusive mkdir).
# The stall: tests/late_op.c, preloaded into this host's keeper, started here.
test_stalled_breaker_never_takes_a_new_holders_sidecar() {
  printf 'stale\nuuidlock=1\nhost=x\nhost_id=gone/1\nkeeper_pid=1\nkeeper_start=1\npid=1\nacquired=0\nlease=1.000\nheartbeat=%017d\n' 0 \
    >"$RIG/srv/f$SFX"
  local shim=${SHIM_PRELOAD##* } preload=$TOP/build/late_op.so
  case $SHIM_PRELOAD in *" "*) preload="${SHIM_PRELOAD% *} $preload" ;; esac  # the ASan runtime first
  (LD_PRELOAD=$preload LATE_OP_SUFFIX=$SFX LATE_OP_UNTIL=$RIG/w2_in LATE_OP_MARK=$RIG/late \
    exec "$(dirname "$shim")/uuidlock-keeper" --runtime-dir "$UUIDLOCK_RUNTIME_DIR" --foreground \
    >/dev/null 2>>"$UUIDLOCK_RUNTIME_DIR/keeper.log") &
  wait_for_file "$UUIDLOCK_RUNTIME_DIR/keeper.sock" || fail "the keeper did not start"
  # shellcheck disable=SC2016 # expanded by the inner sh
  UUIDLOCK_LEASE=1 shimmed flock -w 20 "$C1/f" sh -c '
    if mkdir "$1/inside"; then rmdir "$1/inside"; else echo DOUBLE >>"$1/verdict"; fi
    touch "$1/w1_in"' sh "$RIG" &
  local w1=$!
  wait_for_file "$RIG/late.stalled" || fail "this host never tried to break the stale sidecar"
  # Inside, W2 waits for the late operation, then for its outcome: put back,
  # or (the bug) W1 let in beside it.
  # shellcheck disable=SC2016
  UUIDLOCK_LEASE=1 other_host flock -w 20 "$C2/f" sh -c '
    mkdir "$1/inside" || echo DOUBLE >>"$1/verdict"
    touch "$1/w2_in"
    until [ -e "$1/late" ]; do sleep 0.01; done
    i=0
    until grep -q "put it back" "$1/run/keeper.log" || [ -e "$1/w1_in" ] || [ $i -ge 1000 ]; do
      sleep 0.01; i=$((i + 1))
    done
    rmdir "$1/inside"' sh "$RIG"
  assertEquals "the other host got in" 0 $?
  wait $w1
  assertEquals "this host got in after it" 0 $?
  assertEquals "never two holders" "" "$(cat "$RIG/verdict" 2>/dev/null)"
  assertContains "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "moved a live sidecar aside (the move landed late): put it back"
  assertEquals "nothing left aside" "$RIG/srv/f$SFX.stale.*" "$(echo "$RIG/srv/f$SFX".stale.*)"
}

# A container killed as a whole (its init ended) takes its keeper with it,
# before it could release.  A keeper that sees every process of the machine
# knows that nothing lives in that pid namespace any more: no lease to wait.
test_a_container_killed_as_a_whole_frees_its_lock_at_once() {
  # (A check a second: the keeper must not notice the lock end in the instant before it dies.)
  UUIDLOCK_LEASE=30 UUIDLOCK_RETRY_INTERVAL=1 container "$LOCKDRV" open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/never" >/dev/null &
  local ct=$!
  held
  # unshare (the job's child) with --kill-child: its end kills the container's init, and so all of it
  kill -KILL "$(pgrep -P "$ct" unshare)"; wait "$ct" 2>/dev/null
  assertTrue "its sidecar is left behind" "[ -e '$RIG/srv/f$SFX' ]"
  local t0=$EPOCHREALTIME
  UUIDLOCK_LEASE=30 shimmed flock -w 10 -E 75 "$C2/f" true
  assertEquals "a client outside gets in" 0 $?
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, the lease is 30 s" "between $took 0 5"
  assertContains "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "on this machine is gone"
}

# A holder whose sidecar is taken over (or deleted) says so on its stderr,
# and never deletes the new holder's sidecar.
test_lost_lock_is_reported_and_the_new_sidecar_kept() {
  UUIDLOCK_LEASE=0.3 hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go" un:5
  held
  printf 'new-holder\n' >"$RIG/srv/f$SFX.tmp" && mv "$RIG/srv/f$SFX.tmp" "$RIG/srv/f$SFX"
  local i
  for i in $(seq 300); do grep -q "was lost" "$RIG/hold.err" && break; sleep 0.01; done
  assertContains "$(cat "$RIG/hold.err")" "uuidlock: lock on $C1/f$SFX was lost"
  touch "$RIG/go"; wait "$HOLDER"
  assertEquals "the new holder's sidecar is untouched" "new-holder" "$(cat "$RIG/srv/f$SFX")"
}

# In a container (its own /proc) /proc/locks leaves out a lock whose taker
# exited: flock(1) in `( flock -x 9; ... ) 9>f`.  The subshell still holds
# it, so another host must stay out until it ends (the keeper finds the lock
# in the subshell's fdinfo).  The container waits for the sidecar to go
# before it ends: its end would kill its keeper.
test_container_lock_outliving_its_taker_keeps_other_hosts_out() {
  container bash -c '( flock -x 9 && touch "$1/held" && until [ -e "$1/go" ]; do sleep 0.01; done ) 9>"$2/f"
    for i in $(seq 1000); do [ -e "$3" ] || exit 0; sleep 0.01; done; exit 1' \
    sh "$RIG" "$C1" "$RIG/srv/f$SFX" 2>"$RIG/ct.err" &
  local ct=$!
  held
  other_host flock -w 1 -E 75 "$C2/f" true
  assertEquals "another host stays out while the subshell holds the lock" 75 $?
  touch "$RIG/go"; wait "$ct"
  assertEquals "the container's keeper released: $(cat "$RIG/ct.err")" 0 $?
  other_host flock -w 10 -E 75 "$C2/f" true
  assertEquals "and gets in once the subshell is gone" 0 $?
}

# The same lock lost (its sidecar deleted): the subshell still holding it is
# told, though /proc/locks doesn't name it.
test_container_lock_outliving_its_taker_is_told_when_lost() {
  UUIDLOCK_LEASE=0.3 container bash -c '( flock -x 9 && touch "$1/held" && until [ -e "$1/go" ]; do sleep 0.01; done ) 9>"$2/f"' \
    sh "$RIG" "$C1" 2>"$RIG/ct.err" &
  local ct=$!
  held
  rm "$RIG/srv/f$SFX"
  local i
  for i in $(seq 500); do grep -q "was lost" "$RIG/ct.err" && break; sleep 0.01; done
  assertContains "$(cat "$RIG/ct.err")" "uuidlock: lock on $C1/f$SFX was lost"
  touch "$RIG/go"; wait "$ct"
}

# A process waiting for its turn while this host holds the sidecar and lets
# its holders finish (two shared holders, another host asked for a turn):
# when the sidecar is lost meanwhile, the waiter gets its answer (try again)
# and the keeper forgets the entry without reading it after it is freed
# (the sanitizer run checks).  Only a request sent just after a yield
# reaches that moment in a lock call: wait_turn.py sends it at will.
test_lost_sidecar_answers_a_process_waiting_for_its_turn() {
  local -x UUIDLOCK_LEASE=1.5 UUIDLOCK_LOG=info
  hold open:5:"$C1/f" sh:5 touch:"$RIG/held" wait:"$RIG/go" un:5
  held
  local t0=$EPOCHREALTIME
  other_host flock -w 20 "$C2/f" true &
  local w=$!
  wait_for_file "$RIG/srv/f$SFX.want" || fail "the other host never asked for a turn"
  until between "$(elapsed_since "$t0")" 0.1 1e9; do sleep 0.01; done # the turn (0.04 s) is over
  shimmed "$LOCKDRV" open:5:"$C1/f" sh:5 touch:"$RIG/b_held" wait:"$RIG/go" un:5 >"$RIG/b.out" 2>"$RIG/b.err" &
  local b=$!
  wait_for_file "$RIG/b_held" || fail "B never locked"
  assertContains "this host lets its holders finish" "$(cat "$UUIDLOCK_RUNTIME_DIR/keeper.log")" "giving it up after the local holders"
  python3 "$TOP/tests/wait_turn.py" "$UUIDLOCK_RUNTIME_DIR" "$C1/f$SFX" "$RIG/sent" >"$RIG/turn.out" &
  local t=$!
  wait_for_file "$RIG/sent" || fail "wait_turn.py never asked"
  rm "$RIG/srv/f$SFX"
  wait "$t"
  assertEquals "the waiter is answered" DONE "$(cat "$RIG/turn.out")"
  assertContains "$(cat "$RIG/b.err")" "uuidlock: lock on $C1/f$SFX was lost"
  touch "$RIG/go"; wait "$HOLDER" "$b"
  wait "$w"
  assertEquals "the other host got in" 0 $?
}

# Many trials of several keepers breaking one stale sidecar at once: never
# two holders (each holder proves it with an exclusive mkdir).
test_racing_breakers_never_admit_two_holders() {
  local host_id trial dead w pids
  host_id="$(cat /proc/sys/kernel/random/boot_id)/$(stat -L -c %i /proc/self/ns/pid)"
  # The dead keeper's runtime directory proves it dead: a later keeper ran there.
  mkdir -m 0700 "$RIG/run-dead" && printf '%032d\n%032d\n' 1 2 >"$RIG/run-dead/keepers.list"
  for trial in $(seq 8); do
    wait_no_sidecars # the last trial's holder releases a retry interval after it exits
    sh -c 'exit 0' & dead=$!; wait $dead
    printf 'stale-%s\nuuidlock=1\nhost=x\nhost_id=%s\nkeeper_pid=%s\nkeeper_start=1\nkeeper_id=%032d\nkeeper_dir=%s\npid=%s\nacquired=0\nlease=30.000\nheartbeat=%017d\n' \
      "$trial" "$host_id" "$dead" 1 "$RIG/run-dead" "$dead" 0 >"$RIG/srv/f$SFX"
    pids=()
    for w in 1 2 3 4; do
      local client=$C1; [ $((w % 2)) = 0 ] && client=$C2
      UUIDLOCK_RUNTIME_DIR=$RIG/run-$w LD_PRELOAD=$SHIM_PRELOAD flock -w 20 "$client/f" \
        sh -c 'mkdir "$1/inside" || echo DOUBLE >>"$1/verdict"; sleep 0.02; rmdir "$1/inside"' sh "$RIG" 2>>"$RIG/waiters.err" &
      pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w" || echo "waiter failed" >>"$RIG/verdict"; done
  done
  assertEquals "no double holders, no failures: $(cat "$RIG/waiters.err" 2>/dev/null)" "" "$(cat "$RIG/verdict" 2>/dev/null)"
  for w in 1 2 3 4; do kill "$(cat "$RIG/run-$w/keeper.pid")" 2>/dev/null; done
}

# exec 9>f; flock 9; exec prog: the new image holds the lock.
test_lock_survives_exec() {
  LD_PRELOAD=$SHIM_PRELOAD bash -c 'exec 9>"$1/f"; flock 9 && exec "$2" touch:"$3/held" wait:"$3/go"' \
    sh "$C1" "$LOCKDRV" "$RIG" >/dev/null &
  local pid=$!
  held
  assertEquals "held by the exec'd program" 1 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/go"; wait $pid
  assertEquals "released when it ends" 0 "$(shimmed flock -w 5 "$C2/f" true; echo $?)"
}

test_exit_without_destructors_releases() {
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" ex:5 exit)
  assertContains "$out" "exit ok"
  assertEquals "free after _exit" 0 "$(shimmed flock -w 5 "$C2/f" true; echo $?)"
}

# Crash torture: the lost-update workload while a killer SIGKILLs critical
# sections at random.  Each section that completed logs the value it wrote:
# no value may be written twice (that would be a lost update), and no
# waiter may be left stuck.
test_torture_random_kills() {
  echo 0 >"$RIG/srv/counter"
  local c pids=() w=0
  for c in "$C1" "$C2" "$C1" "$C2"; do
    w=$((w + 1))
    (
      export LD_PRELOAD=$SHIM_PRELOAD
      for i in $(seq 40); do
        # The section lasts 20 ms at least, so that the killer (which looks
        # every 10-50 ms) finds one to kill: at full speed it could miss them all.
        flock "$c/counter.lk" sh -c '
          n=$(cat "$1/counter") && sleep 0.02 && echo $((n + 1)) >"$1/counter.$$" &&
          mv "$1/counter.$$" "$1/counter" && echo $((n + 1)) >>"$2"' critical "$c" "$RIG/done.$w"
      done
    ) >/dev/null 2>&1 &
    pids+=($!)
  done
  local kills=0
  while pgrep -P $$ -f "flock|seq" >/dev/null || kill -0 "${pids[0]}" 2>/dev/null ||
    kill -0 "${pids[1]}" 2>/dev/null || kill -0 "${pids[2]}" 2>/dev/null || kill -0 "${pids[3]}" 2>/dev/null; do
    local victim
    victim=$(pgrep -f "^sh -c .*counter" | shuf -n 1)
    [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null && kills=$((kills + 1))
    sleep 0.0$((RANDOM % 5 + 1))
  done
  local p stuck=0
  for p in "${pids[@]}"; do wait "$p" || true; done
  local dups completed
  dups=$(cat "$RIG"/done.* | sort | uniq -d | head -n 3 | tr '\n' ' ')
  completed=$(cat "$RIG"/done.* | wc -l)
  echo "torture: $kills kills, $completed completed sections, counter $(cat "$RIG/srv/counter")"
  assertEquals "a value written twice means a lost update" "" "$dups"
  assertTrue "some sections were killed" "[ $kills -gt 0 ]"
  assertTrue "the counter covers every completed section" "[ $(cat "$RIG/srv/counter") -ge $completed ]"
}

# Faults: the share refuses the sidecar (read-only, full): ENOLCK and a
# diagnostic, never an unprotected lock, nothing left behind.
mount_extra_client() { # OPTIONS SRC DST
  mkdir -p "$3" && bindfs -o "entry_timeout=0,attr_timeout=0,negative_timeout=0${1:+,$1}" "$2" "$3" \
    2>>"$RIG/extra-mount.err" && EXTRA_MOUNTS+=("$3")
}

# A multi-user share (sshfs with allow_other, as a non-root user): the
# sidecar a user creates appears owned by the server's account, so the user
# can create it but not reopen it for writing.  Here: bindfs that gives root
# every file created through it, and the holder runs as nobody.
mount_multi_user_client() { # -> $RIG/mu, with the directory mu/ writable by all
  chmod 0755 "$RIG" && mkdir -m 0777 "$RIG/srv/mu" "$RIG/nob" && mkdir -m 0700 "$RIG/run-nobody" &&
    chown nobody "$RIG/run-nobody" || return 1
  : >"$RIG/nob/hold.err" && chmod 0666 "$RIG/nob/hold.err" # the keeper (nobody) writes to it
  mount_extra_client create-for-user=root,create-for-group=root "$RIG/srv" "$RIG/mu"
}
# hold_as_nobody STEP...: hold, as user nobody, on the multi-user client.
hold_as_nobody() {
  setpriv --reuid=nobody --regid=nogroup --clear-groups env UUIDLOCK_RUNTIME_DIR="$RIG/run-nobody" \
    UUIDLOCK_PATHS="$RIG/mu" LD_PRELOAD="$SHIM_PRELOAD" "$LOCKDRV" "$@" >"$RIG/nob/hold.out" 2>>"$RIG/nob/hold.err" &
  HOLDER=$!
}
heartbeat_of() { sed -n 's/^heartbeat=//p' "$1"; }

test_heartbeat_goes_on_where_the_sidecar_cant_be_reopened() {
  mount_multi_user_client || fail "cannot mount: $(cat "$RIG/extra-mount.err")"
  UUIDLOCK_LEASE=0.6 hold_as_nobody open:5:"$RIG/mu/mu/f" ex:5 touch:"$RIG/nob/held" wait:"$RIG/nob/go" un:5
  wait_for_file "$RIG/nob/held" || fail "holder never locked: $(cat "$RIG/nob/hold.out" "$RIG/nob/hold.err")"
  UUIDLOCK_LEASE=0.6 other_host flock -w 2 -E 75 "$C2/mu/f" true
  assertEquals "three leases later the other host still waits" 75 $?
  assertNotEquals "the heartbeat moved" 00000000000000000 "$(heartbeat_of "$RIG/srv/mu/f$SFX")"
  touch "$RIG/nob/go"; wait "$HOLDER"
  assertNotContains "$(cat "$RIG/nob/hold.err")" "lost"
}

# Without a descriptor to spare (a keeper started with few), the heartbeat
# reopens the sidecar, which fails every time: the lock is lost, and the
# holder is told before another host can break it.
test_heartbeat_that_keeps_failing_is_a_lost_lock() {
  mount_multi_user_client || fail "cannot mount: $(cat "$RIG/extra-mount.err")"
  (ulimit -n 32; UUIDLOCK_LEASE=0.6 hold_as_nobody open:5:"$RIG/mu/mu/f" ex:5 touch:"$RIG/nob/held" \
    wait:"$RIG/nob/go" un:5; wait "$HOLDER") &
  HOLDER=$!
  wait_for_file "$RIG/nob/held" || fail "holder never locked: $(cat "$RIG/nob/hold.out" "$RIG/nob/hold.err")"
  local i
  for i in $(seq 500); do grep -q "was lost" "$RIG/nob/hold.err" && break; sleep 0.01; done
  assertContains "$(cat "$RIG/nob/hold.err")" "uuidlock: lock on $RIG/mu/mu/f$SFX was lost: its heartbeat failed"
  touch "$RIG/nob/go"; wait "$HOLDER"
}

test_read_only_share_fails_loudly() {
  mount_extra_client ro "$RIG/srv" "$RIG/ro" || fail "cannot mount: $(cat "$RIG/extra-mount.err")"
  echo data >"$RIG/srv/f"
  local out
  out=$(UUIDLOCK_PATHS=$RIG/ro shimmed "$LOCKDRV" open:5:"$RIG/ro/f" ex:5 2>"$RIG/err" 5<"$RIG/ro/f")
  out=$(UUIDLOCK_PATHS=$RIG/ro LD_PRELOAD=$SHIM_PRELOAD python3 -c '
import fcntl, sys
f = open(sys.argv[1])
try:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked")
except OSError as e:
    print("errno", e.errno)
' "$RIG/ro/f" 2>"$RIG/err")
  assertEquals "ENOLCK" "errno 37" "$out"
  assertContains "$(cat "$RIG/err")" "Read-only file system"
}

test_full_share_fails_loudly() {
  mkdir "$RIG/small"
  mount -t tmpfs -o size=64k tmpfs "$RIG/small" && EXTRA_MOUNTS+=("$RIG/small") || fail "no tmpfs"
  echo data >"$RIG/small/f"
  mount_extra_client "" "$RIG/small" "$RIG/full" || fail "cannot mount: $(cat "$RIG/extra-mount.err")"
  head -c 1M /dev/zero >"$RIG/small/filler" 2>/dev/null
  local out
  out=$(UUIDLOCK_PATHS=$RIG/full shimmed "$LOCKDRV" open:5:"$RIG/full/f" ex:5 2>"$RIG/err")
  assertContains "$out" "ex:5 err ENOLCK"
  assertContains "$(cat "$RIG/err")" "uuidlock: "
  assertEquals "no half-written sidecar left" "" "$(ls "$RIG/small" | grep lock)"
  umount "$RIG/full"
}

. shunit2
