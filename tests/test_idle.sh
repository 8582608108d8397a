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

# stopped_trial_locker : writes $RIG/locker.py, run as
#   python3 $RIG/locker.py ROLE FILE $RIG $SFX
# under the shim: it takes flock LOCK_EX
# on FILE (blocking, 30 s at most) and, under it, reads $RIG/srv/counter
# through FILE's client and writes the next value (a new file renamed over
# it, as counter_worker does), appending "ROLE VALUE" to $RIG/written, then
# unlocks explicitly (the keeper releases or idles the sidecar before the
# unlock returns).  ROLE "other" (host 2) says "$RIG/in" once it holds and
# has read, and writes only once host 1's keeper has turned its lock call
# into a wait (host 1 asks for a turn: f$SFX.want appears) -- or once host 1
# got in, which it must not ("$RIG/h1_in"): then it writes anyway, so that
# both write the same value, and exits 4.  ROLE "this" (host 1) appends the
# value it read to $RIG/seen and says "$RIG/h1_in" before it writes.
stopped_trial_locker() {
  cat >"$RIG/locker.py" <<'PY'
import fcntl, os, signal, sys, time
role, path, rig, sfx = sys.argv[1:5]
def timeout(sig, frame): sys.exit(role + ": no lock within 30 s")
signal.signal(signal.SIGALRM, timeout)
signal.alarm(30)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
signal.alarm(0)
counter = os.path.join(os.path.dirname(path), "counter")
with open(counter) as f: v = int(f.read())
rc = 0
if role == "other":
    open(rig + "/in", "w").close()
    want, h1_in = rig + "/srv/f" + sfx + ".want", rig + "/h1_in"
    end = time.monotonic() + 20
    while not (os.path.exists(want) or os.path.exists(h1_in)):
        if time.monotonic() > end: sys.exit("other: this host never asked for a turn")
        time.sleep(0.01)
    if os.path.exists(h1_in): rc = 4
else:
    with open(rig + "/seen", "a") as f: f.write("%d\n" % v)
    open(rig + "/h1_in", "w").close()
tmp = "%s.tmp.%d" % (counter, os.getpid())
with open(tmp, "w") as f: f.write("%d\n" % (v + 1))
os.rename(tmp, counter)
with open(rig + "/written", "a") as f: f.write("%s %d\n" % (role, v + 1))
fcntl.flock(fd, fcntl.LOCK_UN)
sys.exit(rc)
PY
}

# A keeper stopped (SIGSTOP, a debugger, a suspended VM) for longer than the
# lease while it idle-holds may have been broken meanwhile: once it runs
# again it must not grant from memory what another host holds now.  Each
# trial: this host idle-holds f; its keeper is stopped; the other host
# breaks the silent sidecar after a lease and, under its lock, reads a
# counter on the share; the keeper goes on (SIGCONT); a blocking lock call
# here starts while the other host holds, and the other host writes and
# releases only once this host's keeper made that call wait (asked for a
# turn).  Both increment the counter under their lock: a lock call granted
# from the lost hold would read the value the other host read, and both
# would write the same value.  100 trials on bindfs with a lease of 0.5 s
# (about 1 s a trial, 105 s in all); 10 on sshfs and under the sanitizers,
# with a lease of 1 s (about 2 s a trial, 20-30 s in all): a lease must
# outlast any stall of the holder's heartbeat there, and 100 trials in each
# of `make check`'s three other runs of this suite would add 10 minutes.
# Two things keep a stopped keeper from granting here: the heartbeat that
# is overdue when it runs again finds the sidecar taken and forgets the hold
# (heartbeat(), before the keeper reads any request that came meanwhile),
# and resume_idle_hold checks a hold last written more than half a lease ago
# (the one that counts after a suspend: CLOCK_MONOTONIC, on which heartbeats
# are due, stops; CLOCK_BOOTTIME doesn't).  Either alone passes; removing
# both fails the first trial (measured).
test_a_stopped_idle_holder_waits_for_the_host_that_broke_it_counter_never_repeats() {
  local trials=100 lease=0.5
  if [ "${UUIDLOCK_TEST_SHARE:-bindfs}" != bindfs ] || [ -n "${UUIDLOCK_TEST_PRELOAD:-}" ]; then
    trials=10 lease=1
  fi
  export UUIDLOCK_LINGER=60 UUIDLOCK_LEASE=$lease
  stopped_trial_locker
  echo 0 >"$RIG/srv/counter"
  : >"$RIG/written"; : >"$RIG/seen"
  local trial k other rc1 rc2 v
  for trial in $(seq "$trials"); do
    rm -f "$RIG/in" "$RIG/h1_in"
    idle_hold f
    k=$(keeper_pid)
    kill -STOP "$k"
    (other_host timeout 60 python3 "$RIG/locker.py" other "$C2/f" "$RIG" "$SFX" >"$RIG/other.out" 2>&1) &
    other=$!
    if ! wait_for_file "$RIG/in" 30; then
      kill -CONT "$k"; wait "$other"
      fail "trial $trial: the other host never broke in: $(cat "$RIG/other.out")"; break
    fi
    kill -CONT "$k"
    timeout 60 env LD_PRELOAD="$SHIM_PRELOAD" python3 "$RIG/locker.py" this "$C1/f" "$RIG" "$SFX" >"$RIG/this.out" 2>&1
    rc1=$?
    wait "$other"; rc2=$?
    v=$(tail -n 1 "$RIG/seen")
    assertEquals "trial $trial: the other host held until this host waited, and released: $(cat "$RIG/other.out")" 0 "$rc2"
    assertEquals "trial $trial: this host's lock call got in: $(cat "$RIG/this.out")" 0 "$rc1"
    assertEquals "trial $trial: this host read what the other host wrote" $((2 * trial - 1)) "$v"
    [ "$rc1 $rc2 $v" = "0 0 $((2 * trial - 1))" ] || break
  done
  assertEquals "no value written twice: $(sort "$RIG/written" | awk '{ print $2 }' | uniq -d | head -5 | tr '\n' ' ')" \
    "" "$(awk '{ print $2 }' "$RIG/written" | sort | uniq -d)"
  assertEquals "the counter counts every increment" "$(wc -l <"$RIG/written")" "$(cat "$RIG/srv/counter")"
  assertEquals "two increments a trial, $trials trials" $((2 * trials)) "$(wc -l <"$RIG/written")"
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

# SQLite's lock calls for one write transaction (rollback journal): the
# PENDING, SHARED, RESERVED and EXCLUSIVE bytes, a downgrade, the unlocks.
SQLITE_TXN="setlk:5:r:1073741824:1 setlk:5:r:1073741826:510 setlk:5:u:1073741824:1 setlk:5:w:1073741825:1
  setlk:5:w:1073741824:1 setlk:5:w:1073741826:510 setlk:5:r:1073741826:510 setlk:5:u:1073741824:2 setlk:5:u:0:0"

# keeper_connections TRACE : how many times the traced process connected to
# the keeper's socket.
keeper_connections() { grep -c '^connect(.*keeper[.0-9]*sock' "$1"; }

# A process that holds a lock on a file takes more and drops some without
# asking the keeper (src/core/grants.h): of a transaction's nine lock calls
# only the first asks, and the last unlock tells.  (The keeper's own check
# every retry interval makes the next call ask again: one more at most.)
test_lock_calls_of_a_process_holding_the_file_skip_the_keeper() {
  export UUIDLOCK_LINGER=30 UUIDLOCK_RETRY_INTERVAL=1
  lock_unlock g || fail "start the keeper"
  # shellcheck disable=SC2086
  strace -qq -e trace=connect,fcntl -E LD_PRELOAD="$SHIM_PRELOAD" -o "$RIG/trace" \
    "$LOCKDRV" open:5:"$C1/f" $SQLITE_TXN $SQLITE_TXN $SQLITE_TXN >"$RIG/out" 2>&1
  assertEquals "every lock call succeeded" "" "$(grep -v ' ok$' "$RIG/out")"
  assertEquals "the lock calls were made" 27 "$(grep -c '^fcntl(5, F_SETLK,' "$RIG/trace")"
  local n; n=$(keeper_connections "$RIG/trace")
  assertTrue "27 lock calls asked the keeper $n times (2 a transaction)" "[ $n -ge 3 ] && [ $n -le 9 ]"
}

# The cache never outlives the hold: a process holding part of a file whose
# sidecar was lost (deleted, then taken by another host) asks the keeper
# for the next part, and finds the file busy.  Our keeper's own check comes
# only every 5 s and the sidecar was written well within half a lease: only
# the loss itself voids the grant.
test_a_lost_hold_grants_nothing_from_the_cache() {
  export UUIDLOCK_LEASE=3 UUIDLOCK_LINGER=30 UUIDLOCK_RETRY_INTERVAL=5
  hold open:5:"$C1/f" setlk:5:r:0:1 setlk:5:r:2:1 touch:"$RIG/held" wait:"$RIG/go" setlk:5:w:10:1
  held
  rm "$RIG/srv/f$SFX"
  (UUIDLOCK_RETRY_INTERVAL=0.01 other_host "$LOCKDRV" open:5:"$C2/f" ex:5 touch:"$RIG/held2" wait:"$RIG/go2" \
    >"$RIG/other.out" 2>&1) &
  local other=$! i
  wait_for_file "$RIG/held2" || fail "the other host never locked"
  for i in $(seq 1000); do grep -q "was lost" "$RIG/hold.err" && break; sleep 0.01; done
  assertContains "our keeper told the holder" "$(cat "$RIG/hold.err")" "was lost"
  release_holder
  assertContains "$(cat "$RIG/hold.out")" "setlk:5:w:10:1 err EAGAIN"
  touch "$RIG/go2"; wait "$other"
}

# Nor does it outlive the keeper: half a lease after its last heartbeat a
# dead keeper's grants count for nothing, and the next lock call gets a new
# keeper, which takes the sidecar again (a new token), before it returns.
# (No check of the keeper's, every 5 s, comes in between to void it.)
test_a_dead_keepers_grant_runs_out() {
  export UUIDLOCK_LEASE=1 UUIDLOCK_LINGER=30 UUIDLOCK_RETRY_INTERVAL=5
  hold open:5:"$C1/f" setlk:5:r:0:1 touch:"$RIG/held" wait:"$RIG/go" setlk:5:w:10:1 touch:"$RIG/held2" \
    wait:"$RIG/go2"
  held
  local token; token=$(sidecar_token f)
  kill -KILL "$(keeper_pid)"
  sleep 0.6 # the time itself is the condition: over half the 1 s lease since the last heartbeat
  touch "$RIG/go"
  wait_for_file "$RIG/held2" 20 || fail "the second lock never came"
  assertContains "$(cat "$RIG/hold.out")" "setlk:5:w:10:1 ok"
  assertNotEquals "a new keeper took the sidecar again" "$token" "$(sidecar_token f)"
  touch "$RIG/go2"; wait "$HOLDER"
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
