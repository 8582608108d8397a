# shellcheck shell=bash
# bench/cached.sh - section 6 of bench/run.sh (sourced there, on its rig):
# cached holds with the DEFAULT timings (UUIDLOCK_VERIFY_DELAY=1.0,
# UUIDLOCK_RETRY_INTERVAL=0.1, UUIDLOCK_LINGER=5), side by side with no shim
# and with UUIDLOCK_LINGER=0 (every lock a fresh acquisition, as before
# cached holds).  "Another host" is its own keeper (see host2).
echo "bench: 6. cached holds, default timings..." >&2

# defaults CMD... : CMD with the default timings (the rig's fast ones unset).
defaults() {
  env -u UUIDLOCK_VERIFY_DELAY -u UUIDLOCK_RETRY_INTERVAL -u UUIDLOCK_LINGER "$@"
}
# host2 [VAR=VALUE...] CMD... : CMD under the shim with the default timings on
# another host: its own keeper (runtime directory), which, like a real second
# machine's, keeps idle holds -- so not in a pid namespace of its own, where a
# keeper keeps none (it dies with the namespace, see README).
host2() {
  defaults UUIDLOCK_RUNTIME_DIR="$RIG/run-host2" env LD_PRELOAD="$SHIM" "$@"
}
# One long-lived connection writing small transactions for SECONDS: prints the
# number committed.  argv: DB SECONDS NAME [warm]: with "warm", the first
# transaction (the connection's first acquisition) is not timed nor counted.
TXN_PY='
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
def txn():
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t(host, v) VALUES (?, randomblob(100))", (sys.argv[3],))
    db.execute("COMMIT")
    db.execute("SELECT count(*) FROM t").fetchone()
if len(sys.argv) > 4:
    txn()
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    txn()
    n += 1
print(n + (len(sys.argv) > 4))'
new_db() {
  rm -f "$RIG/srv/db"*
  sqlite3 "$RIG/srv/db" 'PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, host TEXT, v BLOB);' >/dev/null
}
# keeper_gone DIR : stop DIR's keeper (SIGTERM releases its idle holds).
keeper_gone() {
  local p
  p=$(cat "$1/keeper.pid" 2>/dev/null) || return 0
  kill -TERM "$p" 2>/dev/null
  while kill -0 "$p" 2>/dev/null; do sleep 0.01; done
}

SECS=$(( SMOKE ? 1 : 3 )) TWO_SECS=$(( SMOKE ? 2 : 10 ))
CR=$(( SMOKE ? 1 : 3 ))
for ((r = 0; r < CR; r++)); do
  # One host, one long-lived connection: transactions per second.
  new_db
  add c.txn.none "$(env -u LD_PRELOAD "$PY" -c "$TXN_PY" "$C1/db" "$SECS" a warm)"
  new_db
  add c.txn.shim "$(defaults UUIDLOCK_RUNTIME_DIR=$RIG/run-c LD_PRELOAD=$SHIM "$PY" -c "$TXN_PY" "$C1/db" "$SECS" a warm)"
  keeper_gone "$RIG/run-c"
  new_db
  add c.txn.nolinger "$(defaults UUIDLOCK_LINGER=0 UUIDLOCK_RUNTIME_DIR=$RIG/run-c LD_PRELOAD=$SHIM "$PY" -c "$TXN_PY" "$C1/db" "$SECS" a warm)"
  keeper_gone "$RIG/run-c"

  # 20 x `flock FILE true`, separate processes.
  t=$(now)
  for i in $(seq 20); do defaults UUIDLOCK_RUNTIME_DIR=$RIG/run-c LD_PRELOAD=$SHIM flock "$C1/f20" true || fail "flock $i"; done
  add c.flock20 $(( $(now) - t ))
  keeper_gone "$RIG/run-c"

  # Hand-off: host 1 used the file and went idle IDLE s ago; host 2's first lock.
  for idle in 0.2 3; do
    defaults UUIDLOCK_RUNTIME_DIR=$RIG/run-c LD_PRELOAD=$SHIM "$LOCKDRV" open:5:"$C1/h" ex:5 un:5 >/dev/null || fail "hand-off lock"
    sleep "$idle"   # the idle time being measured, not a stand-in for a signal
    t=$(now)
    host2 "$LOCKDRV" open:5:"$C2/h" ex:5 un:5 >/dev/null || fail "hand-off to host 2"
    add "c.handoff.$idle" $(( $(now) - t ))
    keeper_gone "$RIG/run-c"; keeper_gone "$RIG/run-host2"
  done
done

# Idle polling: share operations of an idle hold in its first second, and
# from the 2nd to the 5th (strace on a keeper of its own).
IDLE_OPS1='' IDLE_OPS2=''
if [ "$SMOKE" = 0 ] && [ -n "$HAVE_STRACE" ] && mkdir -m 0700 "$RIG/run-idle"; then
  strace -ff -y -ttt -e trace=%file,%desc -o "$RIG/idle.trace" \
    "$KEEPER" --runtime-dir "$RIG/run-idle" --foreground --log-level 3 2>"$RIG/run-idle/keeper.log" &
  IDLE_TRACER=$!
  wait_for_file "$RIG/run-idle/keeper.sock" 10 || fail "traced keeper did not start"
  defaults UUIDLOCK_RUNTIME_DIR=$RIG/run-idle LD_PRELOAD=$SHIM "$LOCKDRV" open:5:"$C1/i" ex:5 un:5 >/dev/null
  t0=${EPOCHREALTIME/,/.}   # strace -ttt's clock
  sleep 5.2   # the span being measured
  keeper_gone "$RIG/run-idle"; wait "$IDLE_TRACER"
  merge_trace "$RIG/idle.trace"
  read -r IDLE_OPS1 IDLE_OPS2 < <(awk -v t0="$t0" -v share="$C1/" '
    index($0, share) && $1 > t0 { if ($1 - t0 <= 1) a++; else if ($1 - t0 <= 5) b++ }
    END { printf "%d %.1f\n", a, b / 4 }' "$RIG/idle.trace")
fi

# Two hosts writing one database at once: totals, each host's share, rows.
two_hosts() { # LINGER KEY
  new_db
  defaults UUIDLOCK_LINGER=$1 UUIDLOCK_RUNTIME_DIR=$RIG/run-c LD_PRELOAD=$SHIM "$PY" -c "$TXN_PY" "$C1/db" "$TWO_SECS" one >"$RIG/two.1" 2>&1 &
  local a=$!
  host2 UUIDLOCK_LINGER="$1" "$PY" -c "$TXN_PY" "$C2/db" "$TWO_SECS" two >"$RIG/two.2" 2>&1
  wait "$a"
  keeper_gone "$RIG/run-c"; keeper_gone "$RIG/run-host2"
  local n1 n2 rows check
  n1=$(cat "$RIG/two.1") n2=$(cat "$RIG/two.2")
  rows=$(sqlite3 "$RIG/srv/db" 'SELECT count(*) FROM t;') check=$(sqlite3 "$RIG/srv/db" 'PRAGMA integrity_check;')
  [ "$rows" = $((n1 + n2)) ] && [ "$check" = ok ] || fail "two hosts: $n1 + $n2 committed, $rows rows, integrity: $check"
  echo "$n1 $n2"
}
read -r TWO1 TWO2 < <(two_hosts 5)
read -r OLD1 OLD2 < <(two_hosts 0)

tps() { calc %.1f "($(med "$1") - 1) / $SECS"; } # less the warm-up transaction
echo
echo "6. Cached holds, DEFAULT timings (verify 1.0 s, retry 0.1 s, linger 5 s; ${UUIDLOCK_TEST_SHARE:-bindfs} client), medians of $CR"
echo "  (rates after each connection's first transaction)"
printf '  one long-lived SQLite connection, small write transactions: %s/s with the shim, %s/s without: ratio %s  target >= 0.5: %s\n' \
  "$(tps c.txn.shim)" "$(tps c.txn.none)" "$(calc %.2f "$(tps c.txn.shim) / ($(tps c.txn.none) + 0.0001)")" \
  "$( [ "$SMOKE" = 1 ] && echo "(smoke)" || awk -v a="$(tps c.txn.shim)" -v b="$(tps c.txn.none)" 'BEGIN { print (a >= 0.5 * b ? "met" : "MISSED") }')"
printf '    (with UUIDLOCK_LINGER=0, every transaction a fresh acquisition: %s/s)\n' "$(tps c.txn.nolinger)"
printf '  20 x flock FILE true (separate processes): %s s in total  target <= one verification delay + their own cost\n' \
  "$(calc %.2f "$(med c.flock20) / 1e6")"
printf '  hand-off to another host, first lock there: %s s when this host went idle 0.2 s before, %s s at 3 s  target <= verify + 0.5 = 1.5 s\n' \
  "$(calc %.2f "$(med c.handoff.0.2) / 1e6")" "$(calc %.2f "$(med c.handoff.3) / 1e6")"
[ -n "$IDLE_OPS1" ] && printf '  an idle hold costs the share %s system calls in its first second, %s/s from the 2nd to the 5th\n' "$IDLE_OPS1" "$IDLE_OPS2"
printf '  two hosts writing one database for %s s: %s + %s = %s transactions (with UUIDLOCK_LINGER=0: %s + %s = %s), rows and integrity checked\n' \
  "$TWO_SECS" "$TWO1" "$TWO2" "$((TWO1 + TWO2))" "$OLD1" "$OLD2" "$((OLD1 + OLD2))"
