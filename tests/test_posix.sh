#!/usr/bin/env bash
# POSIX record locks (fcntl, OFD, lockf) through the shim, driven by the real
# programs that use them: python3, perl, sqlite3, and lockdrv.
. "$(dirname "$0")/locking.sh"

setUp() { rig_setup; }
tearDown() { rig_teardown; }

# python3's fcntl.lockf (fcntl64 F_SETLK/F_SETLKW) excludes across clients.
test_python_lockf_across_clients() {
  hold open:5:"$C1/f" setlk:5:w:0:0 touch:"$RIG/held" wait:"$RIG/go"
  held
  local out
  out=$(shimmed python3 -c '
import fcntl, sys
f = open(sys.argv[1], "r+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("got it")
except OSError as e:
    print("busy", e.errno)
' "$C2/f")
  assertEquals "python lockf -NB from client 2" "busy 11" "$out"
  release_holder
  out=$(shimmed python3 -c '
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.lockf(fd, os.F_LOCK, 0)       # lockf64
print("got it")
' "$C2/f")
  assertEquals "os.lockf once free" "got it" "$out"
  wait_no_sidecars
}

# fcntl.fcntl with a packed struct flock (x86-64 layout).
test_python_fcntl_setlk_packed_struct() {
  local script='
import fcntl, struct, sys, os, time
f = open(sys.argv[1], "r+")
lock = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
try:
    fcntl.fcntl(f, fcntl.F_SETLK, lock)
    print("got it")
except OSError as e:
    print("busy", e.errno)
    sys.exit(0)
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
'
  : >"$C1/f"
  shimmed python3 -c "$script" "$C1/f" "$RIG/held" "$RIG/go" >"$RIG/py1.out" &
  local holder=$!
  held
  assertEquals "busy 11" "$(shimmed python3 -c "$script" "$C2/f" /dev/null /dev/null)"
  touch "$RIG/go"; wait $holder
  assertEquals "got it" "$(shimmed python3 -c "$script" "$C2/f" /dev/null /dev/null)"
}

test_perl_setlkw_and_flock() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  shimmed perl -e '
use Fcntl qw(:DEFAULT :flock);
open(my $fh, "+<", $ARGV[0]) or die;
print flock($fh, LOCK_EX | LOCK_NB) ? "flock got it\n" : "flock busy\n";
open(my $w, ">", $ARGV[1]); close $w;
my $fl = pack("s s l! l! i", F_WRLCK, 0, 0, 0, 0);
print fcntl($fh, F_SETLKW, $fl) ? "setlkw got it\n" : "setlkw failed $!\n";
' "$C2/f" "$RIG/waiting" >"$RIG/perl.out" &
  local perl=$!
  wait_for_file "$RIG/waiting"
  assertTrue "perl waits in F_SETLKW" "kill -0 $perl"
  touch "$RIG/go"; wait "$HOLDER"; wait $perl
  assertEquals "perl" "flock busy
setlkw got it" "$(cat "$RIG/perl.out")"
}

# lockf as a C program calls it, and as a program built with 64-bit off_t
# (fcntl64, lockf64).
test_c_lockf_and_large_file_build() {
  local drv
  for drv in "$LOCKDRV" "${LOCKDRV}64"; do
    rm -f "$RIG/held" "$RIG/go"
    (LD_PRELOAD=$SHIM_PRELOAD exec "$drv" open:5:"$C1/f" lockf:5:tlock:0 touch:"$RIG/held" wait:"$RIG/go" \
      lockf:5:ulock:0 touch:"$RIG/released" wait:"$RIG/end" >"$RIG/hold.out") &
    HOLDER=$!
    held
    local out
    out=$(LD_PRELOAD=$SHIM_PRELOAD "$drv" open:5:"$C2/f" lockf:5:test:0 lockf:5:tlock:0 setlk:5:w:0:1)
    assertContains "$drv" "$out" "lockf:5:test:0 err EACCES"
    assertContains "$drv" "$out" "lockf:5:tlock:0 err EAGAIN"
    assertContains "$drv" "$out" "setlk:5:w:0:1 err EAGAIN"
    touch "$RIG/go"
    wait_for_file "$RIG/released"
    out=$(LD_PRELOAD=$SHIM_PRELOAD "$drv" open:5:"$C2/f" lockf:5:test:0 lockf:5:tlock:0)
    assertContains "$drv: released by F_ULOCK" "$out" "lockf:5:tlock:0 ok"
    touch "$RIG/end"; wait "$HOLDER"
    rm -f "$RIG/released" "$RIG/end"
    # The last lock ended by its process's exit: the keeper lets its sidecar
    # go a check later (from another client's keeper thread's view, until
    # then, the file is busy).
    wait_no_sidecars
  done
}

# The kernel is the oracle: the same sequence of range operations, under the
# shim on a managed file and without it on a local file, gives the same answers.
test_ranges_match_the_kernel() {
  mkdir "$RIG/local"
  local steps=(open:5:F setlk:5:r:0:100 setlk:5:w:10:10 setlk:5:u:50:10 setlk:5:w:200:0
    setlk:5:r:250:-20 child{ open:6:F getlk:6:r:0:0 getlk:6:w:20:5 getlk:6:r:55:1 getlk:6:w:300:1
    setlk:6:r:45:10 setlk:6:w:60:1 getlk:6:w:231:1 } setlk:5:u:0:0
    child{ open:6:F getlk:6:w:0:0 ofdsetlk:6:w:0:10 } ofdsetlk:5:w:0:10 ofdgetlk:5:w:0:10)
  local shimmed_out kernel_out
  shimmed_out=$(LD_PRELOAD=$SHIM_PRELOAD "$LOCKDRV" "${steps[@]//F/$C1/f}" | sed "s|$C1/f|F|g; s/pid=[0-9]*/pid=P/")
  kernel_out=$("$LOCKDRV" "${steps[@]//F/$RIG/local/f}" | sed "s|$RIG/local/f|F|g; s/pid=[0-9]*/pid=P/")
  assertEquals "shim vs kernel" "$kernel_out" "$shimmed_out"
  assertContains "the oracle saw conflicts" "$kernel_out" "err EAGAIN"
}

# The kernel only reads an F_SETLK request: a program may keep it in
# read-only memory (microbench's are static const), and the shim must not
# write to it (it did: SIGSEGV).
test_a_lock_request_in_read_only_memory_is_left_alone() {
  local out
  out=$(shimmed "$TOP/build/microbench" setlk "$C1/f" 20 2>&1)
  assertEquals "microbench setlk under the shim ran (status)" 0 $?
  assertTrue "it timed its loop: '$out'" "[[ '$out' =~ ^[0-9.]+$ ]]"
}

# fork: a child does not hold its parent's record locks, but shares its OFD
# and flock locks.
test_fork_record_vs_ofd_locks() {
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" setlk:5:w:0:10 child{ setlk:5:w:0:10 } \
    open:6:"$C1/g" ofdsetlk:6:w:0:10 child{ ofdsetlk:6:w:0:10 })
  assertContains "child vs parent's record lock" "$out" "setlk:5:w:0:10 err EAGAIN"
  assertContains "child shares the OFD lock" "$(echo "$out" | grep ofdsetlk | tail -n 1)" "ofdsetlk:6:w:0:10 ok"
}

# The daemon idiom: lock, fork, the parent exits; the child keeps the lock.
test_daemon_idiom_keeps_the_lock() {
  hold open:5:"$C1/f" ex:5 forkexit touch:"$RIG/held" wait:"$RIG/go"
  held
  wait "$HOLDER"
  assertEquals "held by the child after the parent exited" 1 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/go"
  assertEquals "free after the child ends" 0 "$(shimmed flock -w 5 "$C2/f" true; echo $?)"
  wait_no_sidecars
}

test_perl_fcntl_across_clients() {
  hold open:5:"$C2/f" setlk:5:r:100:10 touch:"$RIG/held" wait:"$RIG/go"
  held
  local out
  out=$(shimmed perl -e '
use Fcntl;
open(my $fh, "+<", $ARGV[0]) or die;
my $fl = pack("s s l! l! i", F_WRLCK, 0, 0, 0, 0);
print fcntl($fh, F_SETLK, $fl) ? "got it\n" : "busy $!\n";
' "$C1/f")
  assertContains "perl F_SETLK from client 1" "$out" "busy Resource temporarily unavailable"
  release_holder
}

# Ranges are the kernel's among the processes of one client; across clients
# the whole file is the unit.
test_ranges_local_and_whole_file_across_clients() {
  hold open:5:"$C1/f" setlk:5:w:0:10 touch:"$RIG/held" wait:"$RIG/go"
  held
  local out
  out=$(shimmed "$LOCKDRV" open:5:"$C1/f" setlk:5:w:10:10 setlk:5:w:5:10 getlk:5:w:0:0)
  assertContains "disjoint range on the same client" "$out" "setlk:5:w:10:10 ok"
  assertContains "overlapping range on the same client" "$out" "setlk:5:w:5:10 err EAGAIN"
  assertContains "getlk names the local holder" "$out" "type=w start=0 len=10 pid=$HOLDER"
  out=$(shimmed "$LOCKDRV" open:5:"$C2/f" setlk:5:r:1000:1 getlk:5:w:5000:1 lockf:5:test:0 ofdsetlk:5:r:2000:1)
  assertContains "any range from the other client" "$out" "setlk:5:r:1000:1 err EAGAIN"
  assertContains "getlk reports the other client" "$out" "type=w start=0 len=0 pid=-1"
  assertContains "lockf F_TEST" "$out" "lockf:5:test:0 err EACCES"
  assertContains "OFD lock from the other client" "$out" "ofdsetlk:5:r:2000:1 err EAGAIN"
  release_holder
  wait_no_sidecars
}

# SQLite's pattern: upgrade/downgrade on one range, unlock small spans, unlock
# all with l_len 0; the sidecar follows the last lock.
test_upgrade_downgrade_partial_unlock() {
  hold open:5:"$C1/f" setlk:5:r:100:2 setlk:5:w:100:2 setlk:5:r:102:510 setlk:5:u:100:2 \
    touch:"$RIG/held" wait:"$RIG/go" setlk:5:u:0:0 touch:"$RIG/released" wait:"$RIG/end"
  held
  assertNotContains "$(cat "$RIG/hold.out")" " err "
  assertEquals "still held by the shared range" 1 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/go"
  wait_for_file "$RIG/released" || fail "never unlocked"
  assertEquals "free once everything is unlocked" 0 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/end"; wait "$HOLDER"
}

# Closing any descriptor of the file drops the process's record locks.
test_close_of_another_descriptor_releases_record_locks() {
  hold open:5:"$C1/f" open:6:"$C1/f" setlk:5:w:0:0 touch:"$RIG/held" wait:"$RIG/go" close:6 \
    touch:"$RIG/released" wait:"$RIG/end"
  held
  assertEquals "held" 1 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/go"
  wait_for_file "$RIG/released" || fail "never closed"
  assertEquals "released across clients" 0 "$(shimmed flock -w 5 "$C2/f" true; echo $?)"
  touch "$RIG/end"; wait "$HOLDER"
}

test_ofd_lock_belongs_to_the_description() {
  hold open:5:"$C1/f" ofdsetlk:5:w:0:0 open:6:"$C1/f" close:6 touch:"$RIG/held" wait:"$RIG/go" \
    close:5 touch:"$RIG/released" wait:"$RIG/end"
  held
  assertEquals "closing another descriptor keeps an OFD lock" 1 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/go"
  wait_for_file "$RIG/released" || fail "never closed"
  assertEquals "closing its description releases it" 0 "$(shimmed flock -n "$C2/f" true; echo $?)"
  touch "$RIG/end"; wait "$HOLDER"
}

test_blocking_setlkw_waits_for_the_other_client() {
  hold open:5:"$C1/f" setlk:5:w:0:0 touch:"$RIG/held" wait:"$RIG/go"
  held
  shimmed "$LOCKDRV" open:5:"$C2/f" touch:"$RIG/waiting" setlkw:5:w:0:0 >"$RIG/waiter.out" &
  local waiter=$!
  wait_for_file "$RIG/waiting"
  assertTrue "the waiter is still waiting" "kill -0 $waiter"
  touch "$RIG/go"
  wait "$waiter"
  assertContains "$(cat "$RIG/waiter.out")" "setlkw:5:w:0:0 ok"
  wait "$HOLDER"
}

test_a_busy_client_gives_a_waiting_client_its_turn() {
  check_turn setlkw:5:w:0:0 setlk:5:u:0:0
}

test_flock_and_fcntl_exclude_each_other_across_clients() {
  hold open:5:"$C1/f" ex:5 touch:"$RIG/held" wait:"$RIG/go"
  held
  assertContains "$(shimmed "$LOCKDRV" open:5:"$C2/f" setlk:5:r:0:1)" "err EAGAIN"
  release_holder
}

# A long-lived Python sqlite3 connection writing small transactions for
# SECONDS: argv DB SECONDS NAME; prints how many it committed and the
# longest one took, in ms.
SQLITE_WRITER='
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
end, done, longest = time.monotonic() + float(sys.argv[2]), 0, 0
while time.monotonic() < end:
    t0 = time.monotonic()
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t(host, b) VALUES (?, randomblob(300))", (sys.argv[3],))
    db.execute("COMMIT")
    done, longest = done + 1, max(longest, time.monotonic() - t0)
print(done, int(longest * 1000))'

# SQLite only makes non-blocking lock calls: two hosts (own keepers, own pid
# namespaces) writing one database at once must both get turns, not one of
# them starving behind the other's back-to-back transactions.
test_sqlite_on_two_hosts_both_make_progress() {
  sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode=DELETE;
    CREATE TABLE t(id INTEGER PRIMARY KEY, host TEXT, b BLOB); CREATE INDEX t_b ON t(b);' >/dev/null
  shimmed python3 -c "$SQLITE_WRITER" "$C1/db" 6 one >"$RIG/one.out" 2>&1 &
  local one=$!
  (other_host python3 -c "$SQLITE_WRITER" "$C2/db" 6 two >"$RIG/two.out" 2>&1) &
  local two=$!
  wait "$one" "$two"
  local n1 n2 ms1 ms2 rows
  read -r n1 ms1 <"$RIG/one.out"; read -r n2 ms2 <"$RIG/two.out"
  echo "sqlite on two hosts: $n1 and $n2 transactions in 6 s, the longest $ms1 and $ms2 ms"
  rows=$(sqlite3 "$RIG/srv/db" "SELECT count(*) FROM t WHERE host='one'; SELECT count(*) FROM t WHERE host='two';" | tr '\n' ' ')
  assertEquals "every committed row is there" "$n1 $n2 " "$rows"
  assertEquals ok "$(sqlite3 "$RIG/srv/db" 'PRAGMA integrity_check;')"
  # Each host gets at least a fifth of the transactions, and no transaction
  # waits long behind the other host's (starving, they took 0.6-4.4 s).
  assertTrue "host one: $n1 of $((n1 + n2))" "[ $((5 * n1)) -ge $((n1 + n2)) ]"
  assertTrue "host two: $n2 of $((n1 + n2))" "[ $((5 * n2)) -ge $((n1 + n2)) ]"
  assertTrue "host one's longest transaction took $ms1 ms" "[ $ms1 -lt 2000 ]"
  assertTrue "host two's longest transaction took $ms2 ms" "[ $ms2 -lt 2000 ]"
}

# sqlite_workers PRELOAD SQL: 4 workers (2 per client), each running SQL as
# 50 autocommit statements, one sqlite3 process each, busy timeout 30 s.
sqlite_workers() {
  local preload=$1 sql=$2 c w pids=() p rc=0
  for c in c1 c2 c1 c2; do
    (
      for i in $(seq 50); do
        LD_PRELOAD=$preload sqlite3 -cmd '.timeout 30000' "$RIG/$c/db" "$sql" || exit 1
      done
    ) 2>>"$RIG/sqlite.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

sqlite_inserts() {
  sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB); CREATE INDEX t_b ON t(b);' >/dev/null
  sqlite_workers "$1" 'INSERT INTO t(b) VALUES (randomblob(700));'
}

# The rig's control for SQLite: without the shim rows are lost or the index
# is corrupt, so the next test can tell a broken shim.
test_sqlite_without_shim_loses_rows() {
  sqlite_inserts ""
  local rows check
  rows=$(sqlite3 "$RIG/srv/db" 'SELECT count(*) FROM t;' 2>&1)
  check=$(sqlite3 "$RIG/srv/db" 'PRAGMA integrity_check;' 2>&1)
  echo "sqlite without shim: $rows of 200 rows, integrity: $(echo "$check" | head -n 1)"
  assertTrue "expected damage without the shim" "[ '$rows' != 200 ] || [ '$check' != ok ]"
}

# sqlite3 from both clients, rollback journal: every row kept, index intact.
test_sqlite_inserts_from_both_clients() {
  sqlite_inserts "$SHIM_PRELOAD"
  local rc=$?
  assertEquals "every sqlite3 succeeded: $(cat "$RIG/sqlite.err")" 0 $rc
  assertEquals "rows" 200 "$(shimmed sqlite3 "$C2/db" 'SELECT count(*) FROM t;')"
  assertEquals "integrity" ok "$(shimmed sqlite3 "$C2/db" 'PRAGMA integrity_check;')"
  wait_no_sidecars
}

# Long-lived connections keep the file open between transactions: only if
# the host's cached pages are dropped when it acquires does a writer see what
# the other client wrote (FACTS.md: 31-35 of 60 rows without it).
test_sqlite_long_lived_connections_see_each_others_writes() {
  check_long_lived_writers shimmed
}

test_sqlite_update_counter_from_both_clients() {
  sqlite3 "$RIG/srv/db" 'CREATE TABLE c(n INT); INSERT INTO c VALUES (0);'
  sqlite_workers "$SHIM_PRELOAD" 'UPDATE c SET n = n + 1;'
  local rc=$?
  assertEquals "every sqlite3 succeeded: $(cat "$RIG/sqlite.err")" 0 $rc
  assertEquals "counter" 200 "$(sqlite3 "$RIG/srv/db" 'SELECT n FROM c;')"
  wait_no_sidecars
}

test_unmanaged_record_locks_pass_through() {
  mkdir "$RIG/local"
  hold open:5:"$RIG/local/f" setlk:5:w:0:0 touch:"$RIG/held" wait:"$RIG/go"
  held
  assertContains "$("$LOCKDRV" open:5:"$RIG/local/f" setlk:5:w:0:1)" "err EAGAIN"
  assertEquals "no sidecar" "" "$(ls "$RIG/local" | grep lock)"
  release_holder
}

# Python's mailbox locks an mbox F with lockf() *and* a dot-lock F.lock made
# by link(), like mutt, procmail and dovecot: the sidecar must have another
# name.  A holder on client 1; another host on client 2 gets the
# ExternalClashError of a busy lockf, as without the shim; after unlock() it
# gets in.  While held, the dot-lock and the sidecar are both there.
MAILBOX_LOCKER='
import mailbox, os, sys, time
box = mailbox.mbox(sys.argv[1])
try:
    box.lock()
except mailbox.ExternalClashError as e:
    sys.exit(print("clash:", e))
print("locked", flush=True)
if len(sys.argv) > 2:                      # hold until told
    open(sys.argv[2], "w").close()
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.01)
box.unlock()
box.close()
print("unlocked")
'
test_python_mailbox_lock_across_hosts() {
  : >"$RIG/srv/mbox"
  shimmed python3 -c "$MAILBOX_LOCKER" "$C1/mbox" "$RIG/held" "$RIG/go" >"$RIG/hold.out" 2>&1 &
  HOLDER=$!
  wait_for_file "$RIG/held" || fail "the mailbox was not locked: $(cat "$RIG/hold.out")"
  assertTrue "the dot-lock" "[ -e '$RIG/srv/mbox.lock' ]"
  assertTrue "the sidecar beside it" "[ -e '$RIG/srv/mbox$SFX' ]"
  assertContains "another host, while held" \
    "$(other_host python3 -c "$MAILBOX_LOCKER" "$C2/mbox" 2>&1)" "clash: lockf: lock unavailable"
  release_holder
  assertEquals "the holder" "$(printf 'locked\nunlocked')" "$(cat "$RIG/hold.out")"
  assertEquals "another host, once free" "$(printf 'locked\nunlocked')" \
    "$(other_host python3 -c "$MAILBOX_LOCKER" "$C2/mbox" 2>&1)"
  wait_no_sidecars
  assertFalse "no dot-lock left" "[ -e '$RIG/srv/mbox.lock' ]"
}

# CPython's own mailbox lock tests (mbox, MMDF, Babyl, MH: lock, unlock,
# relock, a forked child's lock conflicting), run on the share under the
# shim: regrtest works in a directory below TMPDIR.  With the sidecar named
# F.lock, every lock() failed and test_lock_conflict hung.
test_cpython_mailbox_lock_tests() {
  local py out
  # The python3 on PATH if it has its test suite, else Debian's (make check
  # installs libpython3.11-testsuite).
  for py in python3 /usr/bin/python3 ''; do "$py" -c 'import test.test_mailbox' 2>/dev/null && break; done
  [ -n "$py" ] || { fail "CPython's test suite is missing (Debian: apt-get install libpython3.11-testsuite)"; return; }
  out=$(cd "$C1" && TMPDIR=$C1 UUIDLOCK_LOG=info UUIDLOCK_LOG_FILE=$RIG/uuidlock.log \
    timeout 120 env LD_PRELOAD="$SHIM_PRELOAD" "$py" -m test -v test_mailbox -m '*lock*' 2>&1)
  assertEquals "python3 -m test test_mailbox: $out" 0 $?
  assertContains "$out" "Result: SUCCESS"
  assertEquals "mbox and MMDF lock conflicts tested" 2 "$(grep -c '^test_lock_conflict .* ok$' <<<"$out")"
  assertContains "it ran on the share, under the shim" "$(cat "$RIG/uuidlock.log")" "uuidlock: locked $C1/test_python_"
  wait_no_sidecars
}

. shunit2
