#!/usr/bin/env bash
# Cached holds: a host keeps a file's sidecar while no other host wants it
# (UUIDLOCK_LINGER), so that lock-heavy programs don't pay the verification
# delay at every lock -- and gives it up as soon as another host asks.
# "Another host" is its own keeper in its own pid namespace (other_host).
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }

# sidecar_token FILE : the first line (the holder's token) of FILE's sidecar.
sidecar_token() { head -n 1 "$RIG/srv/$1$SFX" 2>/dev/null; }

# lock_unlock FILE : a shimmed lock and explicit unlock of $C1/FILE.  (An
# unlock returns once the keeper has released or idled the sidecar; a lock
# that ends by exit is seen only at the keeper's next check.)
lock_unlock() { shimmed "$LOCKDRV" open:5:"$C1/$1" ex:5 un:5 >/dev/null; }

# idle_hold FILE : lock_unlock, and check that the sidecar stays.
idle_hold() {
  lock_unlock "$1" || fail "lock $1"
  assertTrue "an idle hold on $1 is kept" "[ -e '$RIG/srv/$1$SFX' ]"
}

# With the default timings (1 s verification), one host locking a file
# over and over pays the verification once, not at every lock.
test_relocking_an_idle_hold_makes_no_new_sidecar_with_default_timings() {
  export UUIDLOCK_VERIFY_DELAY=1.0 UUIDLOCK_RETRY_INTERVAL=0.1 UUIDLOCK_LINGER=30
  idle_hold f
  local token t0=$EPOCHREALTIME i
  token=$(sidecar_token f)
  for i in $(seq 10); do lock_unlock f || fail "lock $i"; done
  local took; took=$(elapsed_since "$t0")
  assertEquals "the same hold served every lock" "$token" "$(sidecar_token f)"
  # Ten fresh acquisitions would take 10 verification delays (10 s).
  assertTrue "10 locks took ${took}s" "between $took 0 5"
}

# An idle holder gives the sidecar to another host that asks, long before
# its linger ends, and then gets it back.  (The other host's keeper, in a
# pid namespace of its own, keeps no idle holds: it dies with it.)
test_another_host_recalls_an_idle_hold() {
  export UUIDLOCK_LINGER=60
  idle_hold f
  local t0=$EPOCHREALTIME
  # An explicit unlock: the other host's keeper dies with its namespace when
  # the command ends, before the check that follows an exit.
  assertContains "the other host gets in" "$(other_host "$LOCKDRV" open:5:"$C2/f" alarm:20 ex:5 un:5)" "ex:5 ok"
  local took; took=$(elapsed_since "$t0")
  assertTrue "recall took ${took}s (linger 60 s)" "between $took 0 10"
  assertEquals "and this host again" 0 "$(shimmed flock -w 20 "$C1/f" true; echo $?)"
}

# The same with a non-blocking asker (SQLite's F_SETLK, flock -n in a loop):
# its repeated asks are a request too.
test_a_polling_host_recalls_an_idle_hold() {
  export UUIDLOCK_LINGER=60
  idle_hold f
  local out
  out=$(other_host /usr/bin/python3 -c '
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire(timeout=20, poll_interval=0.05)
print("got it")
lock.release()' "$C2/f" 2>&1)
  assertEquals "got it" "$out"
}

test_status_says_a_hold_is_idle() {
  export UUIDLOCK_LINGER=60
  idle_hold f
  local out; out=$("$TOP/build/uuidlock" status "$C1/f")
  assertContains "$out" "held by host"
  assertContains "$out" "idle for"
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  assertContains "$("$TOP/build/uuidlock" status "$C1/f")" "in use"
  release_holder
}

# A peer of another implementation (uuid-filelock: its sidecar is the UUID
# alone, created exclusively, retried) never asks for a turn: it gets in
# once the linger ends, not later.
test_a_foreign_peer_gets_in_within_the_linger() {
  export UUIDLOCK_LINGER=2
  idle_hold f
  local t0=$EPOCHREALTIME i
  for i in $(seq 300); do   # uuid-filelock's loop: exclusive create, retry
    (set -o noclobber; printf 'peer-%s' "$i" >"$RIG/srv/f$SFX") 2>/dev/null && break
    sleep 0.05
  done
  local took; took=$(elapsed_since "$t0")
  assertEquals "the peer holds it" "peer-$i" "$(cat "$RIG/srv/f$SFX")"
  assertTrue "the peer got in after ${took}s (linger 2 s)" "between $took 1 8"
  rm -f "$RIG/srv/f$SFX"
}

test_an_idle_hold_ends_after_the_linger() {
  export UUIDLOCK_LINGER=0.3
  idle_hold f
  wait_no_sidecars
}

test_idle_holds_are_capped() {
  export UUIDLOCK_LINGER=60
  local i
  for i in $(seq 70); do lock_unlock "f$i" || fail "lock $i"; done
  local n; n=$(find "$RIG/srv" -name "*$SFX" | wc -l)
  assertEquals "at most 64 idle holds" 64 "$n"
  assertFalse "the least recently used went first" "[ -e '$RIG/srv/f1$SFX' ]"
  assertTrue "the most recent stays" "[ -e '$RIG/srv/f70$SFX' ]"
}

test_keeper_shutdown_releases_idle_holds() {
  export UUIDLOCK_LINGER=60
  idle_hold f
  local k; k=$(keeper_pid)
  kill -TERM "$k"
  local i
  for i in $(seq 500); do [ -e "/proc/$k" ] || break; sleep 0.01; done
  assert_no_sidecars
}

# A keeper stopped (SIGSTOP, a debugger, a suspended VM) for longer than the
# lease while it idle-holds may have been broken meanwhile: once it runs
# again it must not grant from memory what another host holds now.
test_a_stopped_idle_holder_does_not_grant_a_lock_it_lost() {
  export UUIDLOCK_LINGER=60 UUIDLOCK_LEASE=1
  local trial k
  for trial in 1 2 3; do
    rm -f "$RIG/in" "$RIG/go"
    idle_hold f
    k=$(keeper_pid)
    kill -STOP "$k"
    # The other host breaks the silent sidecar after a lease, and holds.
    (other_host flock -w 20 "$C2/f" sh -c "touch '$RIG/in'; until [ -e '$RIG/go' ]; do sleep 0.01; done") &
    local other=$!
    wait_for_file "$RIG/in" 20 || fail "trial $trial: the other host never broke in"
    kill -CONT "$k"
    assertEquals "trial $trial: held by the other host" 75 "$(probe "$C1/f")"
    touch "$RIG/go"; wait "$other"
    assertEquals "trial $trial: free again" 0 "$(shimmed flock -w 20 "$C1/f" true; echo $?)"
  done
}

# The keeper killed while it idle-holds: another host gets in after a lease.
test_killed_idle_holder_is_broken_after_a_lease() {
  export UUIDLOCK_LINGER=60 UUIDLOCK_LEASE=1
  idle_hold f
  local k; k=$(keeper_pid)
  kill -KILL "$k"
  local t0=$EPOCHREALTIME
  assertEquals "the other host gets in" 0 "$(other_host flock -w 20 "$C2/f" true; echo $?)"
  local took; took=$(elapsed_since "$t0")
  assertTrue "took ${took}s, the lease is 1 s" "between $took 0.5 8"
}

# A lock call on a file whose sidecar this host holds makes no round trip to
# the share: no fsync, no stat of the name, no statx that asks the server
# (AT_STATX_DONT_SYNC answers from the client's inode).  Only the first lock,
# a fresh acquisition, checks the name and revalidates the attributes, once.
# The keeper runs already (lock g): strace follows only the locking process.
test_lock_calls_on_a_held_file_make_no_share_round_trip() {
  export UUIDLOCK_LINGER=30
  lock_unlock g || fail "start the keeper"
  local steps="ex:5 un:5" i
  for i in $(seq 10); do steps="$steps ex:5 un:5 sh:5 un:5"; done
  for i in $(seq 5); do steps="$steps setlk:5:w:0:0 setlk:5:u:0:0 lockf:5:lock:0 lockf:5:ulock:0 getlk:5:w:0:0"; done
  # shellcheck disable=SC2086
  strace -qq -e trace=all -E LD_PRELOAD="$SHIM_PRELOAD" -o "$RIG/trace" "$LOCKDRV" open:5:"$C1/f" $steps >"$RIG/out" 2>&1
  assertEquals "every lock call succeeded" "" "$(grep -vE ' ok( type=.*)?$' "$RIG/out")"
  assertEquals "the lock calls were made" 21 "$(grep -cE '^flock\(5, LOCK_(EX|SH)\)' "$RIG/trace")"
  local after_open # the trace after the open of $C1/f
  after_open=$(awk -v name="\"$C1/f\"" 'seen; /^openat\(/ && index($0, name) { seen = 1 }' "$RIG/trace")
  assertEquals "no fsync: $(grep -E '^f(data)?sync' <<<"$after_open")" "" "$(grep -E '^f(data)?sync' <<<"$after_open")"
  assertEquals "the name looked up once, at the fresh acquisition" 1 "$(grep -c "\"$C1/f\"" <<<"$after_open")"
  assertEquals "attributes asked of the server once" 1 "$(grep -c '^statx(5, .*AT_STATX_FORCE_SYNC' <<<"$after_open")"
  assertEquals "no other statx of the file but from the client's inode: $(grep '^statx(5' <<<"$after_open" | grep -v DONT_SYNC | head -3)" \
    1 "$(grep '^statx(5' <<<"$after_open" | grep -cv AT_STATX_DONT_SYNC)"
  assertEquals "no fstat, no fstatfs" 0 "$(grep -cE '^(newfstatat\(5|fstat\(5|fstatfs\(5)' <<<"$after_open")"
}

# Two long-lived SQLite connections on two hosts, holds cached: every row,
# the index intact (FACTS.md: 31-35 of 60 rows without the cache drop).
test_sqlite_long_lived_connections_on_two_hosts_with_cached_holds() {
  export UUIDLOCK_LINGER=5
  check_long_lived_writers other_host
}

# The headline: one long-lived connection, small write transactions, the
# default timings.  Without cached holds each one waits the 1 s verification
# (2 s a transaction, measured); with them, only the first.
test_sqlite_small_transactions_with_default_timings() {
  export UUIDLOCK_VERIFY_DELAY=1.0 UUIDLOCK_RETRY_INTERVAL=0.1
  unset UUIDLOCK_LINGER
  sqlite3 "$RIG/srv/db" 'CREATE TABLE t(id INTEGER PRIMARY KEY, n INT);'
  local out
  out=$(shimmed python3 -c '
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
t0 = time.monotonic()
for i in range(20):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t(n) VALUES (?)", (i,))
    db.execute("COMMIT")
    db.execute("SELECT count(*) FROM t").fetchone()
print("%.2f" % (time.monotonic() - t0))' "$C1/db" 2>&1)
  echo "20 transactions with the default timings: ${out}s"
  assertTrue "20 transactions took ${out}s" "between '$out' 0 8"
  assertEquals "rows" 20 "$(sqlite3 "$RIG/srv/db" 'SELECT count(*) FROM t;')"
}

. shunit2
