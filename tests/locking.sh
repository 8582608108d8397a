# shellcheck shell=bash
# tests/locking.sh - helpers shared by the suites that take locks through the
# shim; sources the rig.  A suite starts with  . "$(dirname "$0")/locking.sh"

# shellcheck source=tests/rig.sh
. "$(dirname "${BASH_SOURCE[0]}")/rig.sh"

# hold STEP...: lockdrv under the shim in the background, as $HOLDER (the
# lockdrv process itself), output in $RIG/hold.out and $RIG/hold.err.
hold() {
  (LD_PRELOAD=$SHIM_PRELOAD exec "$LOCKDRV" "$@" >"$RIG/hold.out" 2>"$RIG/hold.err") &
  HOLDER=$!
}
# held: waits for the holder's "touch:$RIG/held" step.
held() { wait_for_file "$RIG/held" || fail "holder never locked"; }
# release_holder: lets a holder waiting on "wait:$RIG/go" finish.
release_holder() { touch "$RIG/go"; wait "$HOLDER"; }

# probe FILE: 0 if a shimmed `flock -n` gets FILE at once, 75 if it is held.
probe() { shimmed flock -n -E 75 "$1" true; echo $?; }

# wait_no_sidecars: a lock ended by a process's exit is released by the
# keeper's watch of /proc/locks, a retry interval later.
wait_no_sidecars() {
  local i
  for i in $(seq 500); do
    [ -z "$(find "$RIG/srv" -name "*$SFX")" ] && return 0
    sleep 0.01
  done
  assert_no_sidecars
}

keeper_pid() { cat "$UUIDLOCK_RUNTIME_DIR/keeper.pid"; }

# other_host CMD...: CMD under the shim as a process of another host: its own
# keeper (runtime directory $RIG/run-other), its own pid namespace; the keeper
# dies with the namespace when CMD ends.  It keeps the host's /proc.
other_host() {
  UUIDLOCK_RUNTIME_DIR=$RIG/run-other unshare --pid --fork --kill-child \
    env LD_PRELOAD="$SHIM_PRELOAD" "$@"
}

# container CMD...: like other_host, but with the namespace's own /proc, as in
# any container: /proc/locks there leaves out locks whose owner pid can't be
# named in the namespace (FACTS.md, "The field").  Runtime dir $RIG/run-ct.
container() {
  UUIDLOCK_RUNTIME_DIR=$RIG/run-ct unshare --pid --fork --kill-child --mount-proc \
    env LD_PRELOAD="$SHIM_PRELOAD" "$@"
}

# kill_keeper_and_holder: SIGKILL both, as a crash would, and wait until the
# keeper is really gone (or a zombie: PID 1 here may not reap orphans).
# A killed keeper is gone when its keeper.lock is free: the lock belongs to
# the open file table, which outlives the thread-group leader's zombie while
# a share thread is still finishing a FUSE request.
kill_keeper_and_holder() {
  local k i
  k=$(keeper_pid)
  kill -KILL "$k" "$HOLDER"; wait "$HOLDER" 2>/dev/null
  for i in $(seq 500); do
    flock -n -s "$UUIDLOCK_RUNTIME_DIR/keeper.lock" true && return 0
    sleep 0.01
  done
  fail "keeper $k still holds its keeper.lock 5 s after SIGKILL"
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
between() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x >= lo && x <= hi) }'; }

# check_long_lived_writers RUNNER : two long-lived SQLite connections (python3),
# one on client 1 under the shim and one on client 2 run by RUNNER (shimmed,
# or other_host for another host), 30 small write transactions each into an
# indexed table: every row must be there and the index intact.  A client that
# didn't drop its cached pages after acquiring lost rows (FACTS.md: 31-35 of 60).
check_long_lived_writers() {
  sqlite3 "$RIG/srv/db" 'CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, n INT); CREATE INDEX t_who ON t(who, n);'
  local script='
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
for i in range(30):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t(who, n) VALUES (?, ?)", (sys.argv[2], i))
    db.execute("COMMIT")
'
  shimmed python3 -c "$script" "$C1/db" one 2>>"$RIG/py.err" &
  local a=$!
  "$1" python3 -c "$script" "$C2/db" two 2>>"$RIG/py.err"
  local rc=$?
  wait $a
  local rc_a=$?
  assertEquals "both writers succeeded: $(cat "$RIG/py.err")" "0 0" "$rc_a $rc"
  assertEquals "rows" 60 "$(sqlite3 "$RIG/srv/db" 'SELECT count(*) FROM t;')"
  assertEquals "integrity" ok "$(sqlite3 "$RIG/srv/db" 'PRAGMA integrity_check;')"
}

# check_turn LOCK UNLOCK : fairness between hosts.  Client 1's process A
# holds; its process B queues behind A on the kernel lock; W on client 2, on
# another host (own keeper, own pid namespace),
# waits and asks for a turn (f$SFX.want appears).  When A unlocks, client 1
# must give the sidecar up instead of handing it to B: W gets the lock
# first, B after W.  LOCK/UNLOCK are lockdrv steps on descriptor 5, e.g.
# "ex:5" "un:5" or "setlkw:5:w:0:0" "setlk:5:u:0:0".
check_turn() {
  local lock=$1 unlock=$2 t0
  (LD_PRELOAD=$SHIM_PRELOAD exec "$LOCKDRV" open:5:"$C1/f" "$lock" touch:"$RIG/a_held" \
    wait:"$RIG/a_go" "$unlock" >"$RIG/a.out" 2>&1) &
  local a=$!
  wait_for_file "$RIG/a_held" || fail "A never locked"
  t0=$EPOCHREALTIME
  # W is another host: its own keeper, its own pid namespace.
  (other_host "$LOCKDRV" open:5:"$C2/f" "$lock" touch:"$RIG/w_held" \
    wait:"$RIG/w_go" "$unlock" >"$RIG/w.out" 2>&1) &
  local w=$!
  wait_for_file "$RIG/srv/f$SFX.want" || fail "W never asked for a turn"
  (LD_PRELOAD=$SHIM_PRELOAD exec "$LOCKDRV" open:5:"$C1/f" touch:"$RIG/b_asks" "$lock" \
    touch:"$RIG/b_held" "$unlock" >"$RIG/b.out" 2>&1) &
  local b=$!
  wait_for_file "$RIG/b_asks" || fail "B never started"
  # A host keeps the lock for a turn of max(4 retry intervals, verify delay)
  # = 0.04 s here before it looks for turn requests: let A's turn pass.
  until between "$(elapsed_since "$t0")" 0.1 1e9; do sleep 0.01; done
  touch "$RIG/a_go"; wait "$a"
  wait_for_file "$RIG/w_held" || fail "client 2 never got its turn"
  assertFalse "B on client 1 must not hold the lock while W does" "[ -e '$RIG/b_held' ]"
  touch "$RIG/w_go"; wait "$w"
  wait_for_file "$RIG/b_held" || fail "B never got the lock after W"
  wait "$b"
  assertEquals "A: $(cat "$RIG/a.out")" 0 "$(grep -c ' err E' "$RIG/a.out")"
  assertEquals "W: $(cat "$RIG/w.out")" 0 "$(grep -c ' err E' "$RIG/w.out")"
  assertEquals "B: $(cat "$RIG/b.out")" 0 "$(grep -c ' err E' "$RIG/b.out")"
  assertNotContains "B's lock call leaves errno alone" "$(cat "$RIG/b.out")" "$lock ok errno-changed"
  wait_no_sidecars
  assertFalse "no turn request left" "[ -e '$RIG/srv/f$SFX.want' ]"
}
