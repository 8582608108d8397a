#!/usr/bin/env bash
# SQLite WAL databases on the share.  One host works as without the shim
# (its connections share one page cache); across hosts the WAL index's
# sidecar (DB-shm) makes them take turns per connection lifetime: every WAL
# connection holds a read lock on the index's "dead man switch" byte while it
# is open, so a host holds DB-shm's sidecar as long as one of its connections
# is open, and the next host's first connection rebuilds the index from what
# is on the share.  "Another host" is its own keeper in its own pid namespace.
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }

new_wal_db() {
  sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, b BLOB);
    CREATE INDEX t_b ON t(b);' >/dev/null
}
rows() { sqlite3 "$RIG/srv/db" "SELECT count(*) FROM t${1:+ WHERE who='$1'};"; }
integrity() { sqlite3 "$RIG/srv/db" 'PRAGMA integrity_check;'; }

# A long-lived connection (python3) inserting N rows as WHO, one transaction
# each, with THREADS threads of its own connections: argv DB N WHO THREADS.
WAL_WRITER='
import sqlite3, sys, threading
def work(who):
    db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
    for i in range(int(sys.argv[2])):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t(who, b) VALUES (?, randomblob(500))", (who,))
        db.execute("COMMIT")
    db.close()
threads = [threading.Thread(target=work, args=(sys.argv[3],)) for _ in range(int(sys.argv[4]))]
for t in threads: t.start()
for t in threads: t.join()'

# sqlite3_inserts CLIENT WHO N : N short-lived sqlite3 processes, one INSERT each.
sqlite3_inserts() {
  local i
  for ((i = 0; i < $3; i++)); do
    sqlite3 -cmd '.timeout 60000' "$1/db" "INSERT INTO t(who, b) VALUES ('$2', randomblob(500));" || return 1
  done
}

test_wal_on_one_host_with_processes_and_threads() {
  new_wal_db
  export LD_PRELOAD=$SHIM_PRELOAD
  sqlite3_inserts "$C1" p1 25 2>>"$RIG/err" & local a=$!
  sqlite3_inserts "$C1" p2 25 2>>"$RIG/err" & local b=$!
  python3 -c "$WAL_WRITER" "$C1/db" 25 threads 2 2>>"$RIG/err" & local c=$!
  wait "$a"; local ra=$?; wait "$b"; local rb=$?; wait "$c"; local rc=$?
  unset LD_PRELOAD
  assertEquals "every writer succeeded: $(cat "$RIG/err")" "0 0 0" "$ra $rb $rc"
  assertEquals "rows" 100 "$(rows)"
  assertEquals "integrity" ok "$(integrity)"
  assertEquals "still WAL" wal "$(sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode;')"
}

# Two hosts at once: a long-lived connection on one, short-lived processes
# on the other, then the other way round; every committed row is there.
test_wal_on_two_hosts_takes_turns() {
  new_wal_db
  shimmed python3 -c "$WAL_WRITER" "$C1/db" 20 one 2 2>>"$RIG/err" & local a=$!
  (other_host bash -c "$(declare -f sqlite3_inserts); sqlite3_inserts '$C2' two 15") 2>>"$RIG/err" & local b=$!
  wait "$a"; local ra=$?; wait "$b"; local rb=$?
  (other_host python3 -c "$WAL_WRITER" "$C2/db" 20 three 1) 2>>"$RIG/err" & a=$!
  (LD_PRELOAD=$SHIM_PRELOAD sqlite3_inserts "$C1" four 15) 2>>"$RIG/err" & b=$!
  wait "$a"; local rc=$?; wait "$b"; local rd=$?
  assertEquals "every writer succeeded: $(cat "$RIG/err")" "0 0 0 0" "$ra $rb $rc $rd"
  assertEquals "host 1's long-lived connections" 40 "$(rows one)"
  assertEquals "host 2's processes" 15 "$(rows two)"
  assertEquals "host 2's long-lived connection" 20 "$(rows three)"
  assertEquals "host 1's processes" 15 "$(rows four)"
  assertEquals "integrity" ok "$(integrity)"
}

# A host whose last connection closed keeps the WAL index's sidecar as an
# idle hold; the next host's connection only probes it (F_GETLK) before it
# takes it, and its probes must recall the hold: not wait out the linger.
test_wal_next_host_recalls_an_idle_hold() {
  export UUIDLOCK_LINGER=30
  new_wal_db
  shimmed sqlite3 "$C1/db" "INSERT INTO t(who) VALUES ('one');" || fail "host 1"
  assertTrue "host 1 keeps the index's sidecar" "[ -e '$RIG/srv/db-shm$SFX' ]"
  local t0=$EPOCHREALTIME
  other_host sqlite3 -cmd '.timeout 60000' "$C2/db" "INSERT INTO t(who) VALUES ('two');" || fail "host 2"
  local took; took=$(elapsed_since "$t0")
  assertTrue "host 2 got in after ${took}s (the linger is 30 s)" "between $took 0 10"
  assertEquals "rows" "1 1" "$(rows one) $(rows two)"
}

# A WAL writer killed in the middle of a transaction: the other host sees
# exactly the committed rows.
test_wal_writer_killed_mid_transaction() {
  new_wal_db
  (LD_PRELOAD=$SHIM_PRELOAD exec python3 -c '
import sqlite3, sys, os, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
for i in range(5):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t(who, b) VALUES (?, randomblob(500))", ("committed",))
    db.execute("COMMIT")
db.execute("BEGIN IMMEDIATE")
for i in range(50):
    db.execute("INSERT INTO t(who, b) VALUES (?, randomblob(5000))", ("uncommitted",))
open(sys.argv[2], "w").close()
time.sleep(60)' "$C1/db" "$RIG/mid" 2>>"$RIG/err") &
  local w=$!
  wait_for_file "$RIG/mid" 20 || fail "the writer never got mid-transaction"
  kill -KILL "$w"; wait "$w" 2>/dev/null
  local out
  out=$(other_host sqlite3 -cmd '.timeout 30000' "$C2/db" "SELECT who, count(*) FROM t GROUP BY who; PRAGMA integrity_check;" 2>&1)
  assertEquals "the other host sees the committed rows only" "committed|5
ok" "$out"
}

# Checkpoints on either host while the other waits to write.
test_wal_checkpoints_on_either_host() {
  new_wal_db
  (LD_PRELOAD=$SHIM_PRELOAD sqlite3_inserts "$C1" one 10) 2>>"$RIG/err" || fail "host 1 inserts"
  (other_host bash -c "$(declare -f sqlite3_inserts); sqlite3_inserts '$C2' two 5 &
     sqlite3 -cmd '.timeout 60000' '$C2/db' 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null; wait") 2>>"$RIG/err" &
  local b=$!
  shimmed sqlite3 -cmd '.timeout 60000' "$C1/db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null 2>>"$RIG/err" || fail "checkpoint on host 1"
  (LD_PRELOAD=$SHIM_PRELOAD sqlite3_inserts "$C1" three 5) 2>>"$RIG/err" || fail "host 1 inserts after"
  wait "$b" || fail "host 2: $(cat "$RIG/err")"
  assertEquals "every row" "10 5 5" "$(rows one) $(rows two) $(rows three)"
  assertEquals "integrity" ok "$(integrity)"
}

# The control: the same two-host writers without the shim lose rows or fail
# (FACTS.md: about half lost, sometimes SIGBUS), so the tests above can tell.
test_wal_without_shim_loses_rows() {
  new_wal_db
  (sqlite3_inserts "$C1" one 50) 2>/dev/null & local a=$!
  (sqlite3_inserts "$C2" two 50) 2>/dev/null & local b=$!
  python3 -c "$WAL_WRITER" "$C1/db" 50 three 1 2>/dev/null & local c=$!
  python3 -c "$WAL_WRITER" "$C2/db" 50 four 1 2>/dev/null & local d=$!
  wait "$a" "$b" "$c" "$d"
  local n check
  n=$(rows 2>&1) check=$(integrity 2>&1 | head -n 1)
  echo "WAL without shim: $n of 200 rows, integrity: $check"
  assertTrue "rows were lost or the database damaged ($n rows, $check)" "[ '$n' != 200 ] || [ '$check' != ok ]"
}

suite() {
  suite_addTest test_wal_on_one_host_with_processes_and_threads
  suite_addTest test_wal_on_two_hosts_takes_turns
  suite_addTest test_wal_next_host_recalls_an_idle_hold
  suite_addTest test_wal_writer_killed_mid_transaction
  suite_addTest test_wal_checkpoints_on_either_host
  suite_addTest test_wal_without_shim_loses_rows
}
. shunit2
