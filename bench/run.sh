#!/usr/bin/env bash
# bench/run.sh [--smoke] - the benchmark behind `make bench`; prints one table.
#
# Every ratio compares a baseline and a candidate measured in this same run,
# alternated, RUNS times; the table shows medians (absolute times are for
# information). --smoke: tiny counts (< 20 s), targets not judged, for the
# test suite; exits non-zero if a measurement fails or exclusion is broken.
# Needs root (FUSE), strace, python3-filelock, liblockfile-bin (make bench-deps),
# and `make all build/microbench build/bench-empty.so`. Environment:
# BENCH_RUNS (default 5), BENCH_KEEP=DIR (keep the rig's traces and logs there),
# UUIDLOCK_TEST_SHARE=sshfs and UUIDLOCK_TEST_LATENCY_MS (tests/rig.sh: run on
# sshfs instead of bindfs, with added latency), BENCH_ONLY=share.
# bench/README-notes.md explains the targets the table reports as MISSED.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP" || exit 1
. tests/rig.sh
MB=$TOP/build/microbench EMPTY=$TOP/build/bench-empty.so
PY=/usr/bin/python3 # Debian's, which has python3-filelock

if [ "${1:-}" = --smoke ]; then
  SMOKE=1 RUNS=3 N=20000 SPAWNS=80 PAIRS=20 PROC_PAIRS=5 ROUNDS=3 HOLD_MS=300 MEMN=20 SCALE_N="20 40"
else
  SMOKE=0 RUNS=${BENCH_RUNS:-5} N=1000000 SPAWNS=2000 PAIRS=300 PROC_PAIRS=100 ROUNDS=20 HOLD_MS=3000 MEMN=1000 SCALE_N="50 100 200"
fi
# BENCH_ONLY=share: only the on-share sections (2-4), e.g. for a second share kind.
ONLY_SHARE=$([ "${BENCH_ONLY:-}" = share ] && echo 1 || echo 0)
# BENCH_ONLY=cached: only section 6 (cached holds, default timings).
ONLY_CACHED=$([ "${BENCH_ONLY:-}" = cached ] && echo 1 || echo 0)
[ "$ONLY_CACHED" = 1 ] && ONLY_SHARE=1
FAILED=0
fail() { echo "bench: FAILED: $*" >&2; FAILED=1; }
LOCAL=$(mktemp -d /tmp/uuidlock-bench.XXXXXX) || exit 1
# Our own copy of the library and keeper (found next to it): a rebuild of
# build/ while we run must not change what we measure.
mkdir "$LOCAL/lib" && cp "$SHIM" "$TOP/build/uuidlock-keeper" "$LOCAL/lib/" && cp "$MB" "$EMPTY" "$LOCAL/" ||
  { echo "bench: build/ incomplete: run make bench" >&2; rm -rf "$LOCAL"; exit 1; }
SHIM=$LOCAL/lib/libuuidlock_shim.so KEEPER=$LOCAL/lib/uuidlock-keeper MB=$LOCAL/microbench EMPTY=$LOCAL/bench-empty.so
# Optional tools (make bench-deps installs them): without one, its rows say n/a.
HAVE_STRACE=$(command -v strace) HAVE_SOFT=$("$PY" -c 'import filelock; print(1)' 2>/dev/null)
# dotlockfile is setgid mail: FUSE refuses a process whose gid differs from the
# mounter's (no allow_other). A plain copy is the same program, without the bit.
DOTLOCKFILE=$LOCAL/dotlockfile
HAVE_DOTLOCK=$(command -v dotlockfile) && cp "$HAVE_DOTLOCK" "$DOTLOCKFILE" && chmod 0755 "$DOTLOCKFILE"
[ -n "$HAVE_STRACE" ] && [ -n "$HAVE_SOFT" ] && [ -n "$HAVE_DOTLOCK" ] ||
  echo "bench: strace, python3-filelock or dotlockfile missing (make bench-deps): those rows say n/a" >&2
trap '[ -n "${BENCH_KEEP:-}" ] && cp -r "$RIG" "$BENCH_KEEP"; rig_teardown; rm -rf "$LOCAL"' EXIT
trap 'exit 130' INT TERM
rig_setup || exit 1
export UUIDLOCK_VERIFY_DELAY=0 UUIDLOCK_RETRY_INTERVAL=0.01

# --- statistics ---------------------------------------------------------------
declare -A R # R[key] = the values of all runs, space separated
add() { R[$1]+=" $2"; }
# pct P < numbers : the P-th percentile (50 = median), nearest rank
pct() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { if (NR) { i = int((NR * p + 99) / 100); print v[i < 1 ? 1 : i] } }'; }
med() { printf '%s\n' ${R[$1]-} | pct 50; }
# rmed CAND BASE : median over runs of CAND/BASE, each run's pair measured side by side
ratios() { paste <(printf '%s\n' ${R[$1]-}) <(printf '%s\n' ${R[$2]-}) | awk '{ printf "%.4f\n", $1 / $2 }'; }
rmed() { ratios "$1" "$2" | pct 50 | xargs printf %.3f; }
rrange() { ratios "$1" "$2" | sort -g | awk 'NR == 1 { lo = $1 } END { printf "%.2f-%.2f", lo, $1 }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
verdict() { # RATIO LIMIT
  [ "$SMOKE" = 1 ] && { echo "(smoke)"; return; }
  awk -v r="$1" -v l="$2" 'BEGIN { print (r <= l ? "met" : "MISSED") }'
}
now() { echo "${EPOCHREALTIME/[.,]/}"; } # microseconds

if [ "$ONLY_SHARE" = 0 ]; then
# --- 1. off the share -----------------------------------------------------------
# Variants: base = no shim; unset = shim, no UUIDLOCK_ variable at all (a
# library preloaded everywhere, nothing configured); other = shim with the
# rig's configuration and UUIDLOCK_PATHS naming a directory on another device
# (the file is unmanaged but the check runs); empty = an empty preloaded
# library (start-up only).  base, empty and unset get the same environment.
NOCONF=()
for v in $(compgen -e | grep '^UUIDLOCK_'); do NOCONF+=(-u "$v"); done
variant() {
  local v=$1; shift
  case $v in
    base)  env -u LD_PRELOAD "${NOCONF[@]}" "$@" ;;
    unset) env "${NOCONF[@]}" LD_PRELOAD="$SHIM" "$@" ;;
    other) env UUIDLOCK_PATHS="$C1" LD_PRELOAD="$SHIM" "$@" ;;
  esac
}
spawn() { # VARIANT : SPAWNS/4 starts of /bin/true; the launcher itself runs unshimmed
  case $1 in
    base)  env -u LD_PRELOAD "${NOCONF[@]}" "$MB" spawn $((SPAWNS / 4)) /bin/true - ;;
    empty) env -u LD_PRELOAD "${NOCONF[@]}" "$MB" spawn $((SPAWNS / 4)) /bin/true "$EMPTY" ;;
    unset) env -u LD_PRELOAD "${NOCONF[@]}" "$MB" spawn $((SPAWNS / 4)) /bin/true "$SHIM" ;;
    other) env -u LD_PRELOAD UUIDLOCK_PATHS="$C1" "$MB" spawn $((SPAWNS / 4)) /bin/true "$SHIM" ;;
  esac
}
CALLS=(flock setlk getfl openclose dupclose)
declare -A LABEL=([flock]="flock EX+UN" [setlk]="fcntl F_SETLK lock+unl" [getfl]="fcntl F_GETFL"
  [openclose]="open+close" [dupclose]="dup+close")
echo "bench: 1. off the share ($RUNS runs)..." >&2
for ((r = 0; r < RUNS; r++)); do
  vs=(base unset other)
  for c in "${CALLS[@]}"; do
    for i in 0 1 2; do # rotate the order from run to run
      v=${vs[(i + r) % 3]}
      x=$(variant "$v" "$MB" "$c" "$LOCAL/f" "$N") && add "$c.$v" "$x" || fail "microbench $c ($v)"
    done
  done
  # start-up is the noisiest: SPAWNS per run in 4 rounds of SPAWNS/4, alternated
  vs=(base empty unset other)
  for q in 0 1 2 3; do
    for i in 0 1 2 3; do
      v=${vs[(i + r + q) % 4]}
      x=$(spawn "$v") && add "start.$v" "$x" || fail "spawn ($v)"
    done
  done
done

fi

# merge_trace TRACE: the keeper's threads (one per share) each traced to
# TRACE.<tid> (strace -ff: whole lines, never split into "<unfinished ...>"
# and "<... resumed>" by another thread), merged into TRACE in time order.
merge_trace() {
  sort -s -n -k1,1 "$1".[0-9]* >"$1" && rm -f "$1".[0-9]*
}

if [ "$ONLY_CACHED" = 0 ]; then
# --- 2. on the share --------------------------------------------------------------
# start_traced_keeper DIR: this host's keeper for runtime dir DIR, under strace
# (trace in DIR.trace; "holding"/"released" log lines mark the phases).
start_traced_keeper() {
  [ -n "$HAVE_STRACE" ] && mkdir -m 0700 "$1" || return 1
  strace -ff -y -ttt -e trace=%file,%desc -o "$1.trace" \
    "$KEEPER" --runtime-dir "$1" --foreground --log-level 3 2>"$1/keeper.log" &
  TRACER=$!
  wait_for_file "$1/keeper.sock" 10 || { fail "keeper under strace did not start"; return 1; }
}
stop_traced_keeper() { # DIR
  local p; p=$(cat "$1/keeper.pid" 2>/dev/null) && kill -TERM "$p"
  wait "$TRACER"
  merge_trace "$1.trace"
}
# share_ops TRACE : for a keeper trace, prints
#   "acquires releases acq_calls verify_calls rel_calls acq_ops verify_ops rel_ops looks | first acquire's calls | first release's calls"
# counting system calls whose path or descriptor is on the share ($C1, $C2).
# Calls are system calls; ops are file operations, where reading a file by
# name (open O_RDONLY, read, close) is one: the issue's "verification read".
# Looks: tests for another host's turn request (*.want), counted apart.
share_ops() {
  awk -v c1="$C1/" -v c2="$C2/" '
    function on_share(l) { return index(l, "\"" c1) || index(l, "<" c1) || index(l, "\"" c2) || index(l, "<" c2) }
    function fd_of(l) { return match(l, /\([0-9]+</) ? substr(l, RSTART + 1, RLENGTH - 2) : "" }
    BEGIN { ph = "acq"; verify = 0 }
    /uuidlock: holding/  { na++; ph = "rel"; verify = 0; next }
    /uuidlock: released/ { nr++; ph = "acq"; next }
    on_share($0) && /\.want"/ { looks++; next }
    on_share($0) {
      split($2, f, "("); op = f[1]
      if (op == "openat") op = ($0 ~ /O_EXCL/) ? "create" : "open"
      if (ph == "acq" && op == "open") verify = 1
      n[ph verify]++
      part_of_read = 0
      if (op == "open" && $0 ~ /O_RDONLY/ && match($0, /= [0-9]+</)) reading[substr($0, RSTART + 2, RLENGTH - 3)] = 1
      else if ((op == "read" || op == "close") && (fd_of($0) in reading)) {
        part_of_read = 1
        if (op == "close") delete reading[fd_of($0)]
      }
      if (!part_of_read) o[ph verify]++
      if ((ph == "acq" && na == 0) || (ph == "rel" && nr == 0)) seq[ph] = seq[ph] " " op
    }
    END { printf "%d %d %d %d %d %d %d %d %d |%s |%s\n", na, nr, n["acq0"], n["acq1"], n["rel0"], o["acq0"], o["acq1"], o["rel0"], looks, seq["acq"], seq["rel"] }' "$1"
}
# client_ops TRACE PAIRS : a shimmed program's own calls on the share, per pair
client_ops() {
  awk -v c1="$C1/" -v n="$2" '
    index($0, "<" c1) || index($0, "\"" c1) { split($0, f, "("); c[f[1]]++ }
    END { for (k in c) if (k != "readlink" && c[k] >= n) printf " %s %.1f", k, c[k] / n; print "" }' "$1" | sort
}

echo "bench: 2. on the share..." >&2
soft_loop() { # PATH N : py-filelock SoftFileLock acquire+release, ns per pair
  "$PY" - "$1" "$2" <<'EOF'
import sys, time
from filelock import SoftFileLock
lock, n = SoftFileLock(sys.argv[1]), int(sys.argv[2])
for _ in range(max(n // 10, 1)): lock.acquire(); lock.release()
t = time.perf_counter()
for _ in range(n): lock.acquire(); lock.release()
print((time.perf_counter() - t) / n * 1e9)
EOF
}
proc_loop() { # CMD... : PROC_PAIRS runs of CMD (a shell function), ns per run
  local t i; t=$(now)
  for ((i = 0; i < PROC_PAIRS; i++)); do "$@" || return 1; done
  echo $(( ($(now) - t) * 1000 / PROC_PAIRS ))
}
dotlock_pair() { "$DOTLOCKFILE" -l -r 0 "$C1/d.lock" && "$DOTLOCKFILE" -u "$C1/d.lock"; }
flock1_pair() { LD_PRELOAD=$SHIM flock "$C1/f1" true; }
SIDE=(uuid kshare soft dotlock flock1)
DOTLOCK_FAILS= # dotlockfile's link() check fails on sshfs (no real link counts)
for ((r = 0; r < RUNS; r++)); do
  for i in 0 1 2 3 4; do
    v=${SIDE[(i + r) % 5]}
    { [ $v = soft ] && [ -z "$HAVE_SOFT" ]; } || { [ $v = dotlock ] && [ -z "$HAVE_DOTLOCK" ]; } && continue
    case $v in
      uuid)    x=$(LD_PRELOAD=$SHIM "$MB" flock "$C1/f" "$PAIRS") ;;
      kshare)  x=$(env -u LD_PRELOAD "$MB" flock "$C1/k" $((PAIRS * 10))) ;;
      soft)    x=$(soft_loop "$C1/s.lock" "$PAIRS") ;;
      dotlock) x=$(proc_loop dotlock_pair) ;;
      flock1)  x=$(proc_loop flock1_pair) ;;
    esac && add "side.$v" "$x" || { [ $v = dotlock ] && DOTLOCK_FAILS=1; } || fail "side by side: $v"
  done
done
# sqlite3: one INSERT, with and without the shim (time), alternated
"$PY" -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("CREATE TABLE t(x)"); c.commit()' "$C1/db"
for ((r = 0; r < RUNS; r++)); do
  for v in with without; do
    t=$(now)
    if [ $v = with ]; then LD_PRELOAD=$SHIM sqlite3 "$C1/db" 'INSERT INTO t VALUES(1)'
    else env -u LD_PRELOAD sqlite3 "$C1/db" 'INSERT INTO t VALUES(1)'; fi || fail "sqlite3 INSERT ($v)"
    add "sql.$v" $(( ($(now) - t) * 1000 ))
  done
done

# Share operations: a keeper under strace, a traced shimmed loop, then sqlite3.
COUNT=$(( SMOKE ? 10 : 100 ))
RUNDIR=$RIG/run-trace
if start_traced_keeper "$RUNDIR"; then
  UUIDLOCK_RUNTIME_DIR=$RUNDIR strace -y -e trace=%file,%desc -o "$RIG/client.trace" \
    -E LD_PRELOAD="$SHIM" "$MB" flock "$C1/t" "$COUNT" >/dev/null || fail "traced loop"
  stop_traced_keeper "$RUNDIR"
  read -r NACQ NREL ACQ_CALLS VERIFY_CALLS REL_CALLS ACQ_OPS VERIFY_OPS REL_OPS LOOKS rest < <(share_ops "$RUNDIR.trace")
  ACQ_SEQ=${rest#| }; REL_SEQ=${ACQ_SEQ#*| }; ACQ_SEQ=${ACQ_SEQ%% |*}
  CLIENT=$(client_ops "$RIG/client.trace" "$NACQ")
  [ "$NACQ" -eq $((COUNT + COUNT / 10)) ] && [ "$NREL" -eq "$NACQ" ] ||
    fail "traced loop: $NACQ acquisitions and $NREL releases, expected $((COUNT + COUNT / 10))"
fi
SQLDIR=$RIG/run-sql
if start_traced_keeper "$SQLDIR"; then
  UUIDLOCK_RUNTIME_DIR=$SQLDIR LD_PRELOAD=$SHIM sqlite3 "$C1/db" 'INSERT INTO t VALUES(2)' || fail "traced sqlite3"
  stop_traced_keeper "$SQLDIR"
  read -r SQL_ACQ SQL_REL SQL_A SQL_V SQL_R _ _ _ _ _ < <(share_ops "$SQLDIR.trace")
  SQL_OPS=$((SQL_A + SQL_V + SQL_R))
fi

# --- 3. under contention ------------------------------------------------------------
# Two clients, each with its own keeper (runtime dir): two hosts. K=4 workers,
# 2 per client, hold 2 ms, think 2 ms, ROUNDS each.
echo "bench: 3. under contention..." >&2
mkdir -m 0700 "$RIG/run1" "$RIG/run2"
pids=()
for w in 1a 1b 2a 2b; do
  c=${w%?}
  cdir=$C1; [ "$c" = 2 ] && cdir=$C2
  UUIDLOCK_RUNTIME_DIR=$RIG/run$c LD_PRELOAD=$SHIM "$MB" handoff "$cdir/h" "$ROUNDS" 2000 "$RIG/go" >"$RIG/ho.$w" &
  pids+=($!)
done
touch "$RIG/go"
for p in "${pids[@]}"; do wait "$p" || fail "handoff worker"; done
# "T A|R WORKER [WAIT]" lines, in time order
for w in 1a 1b 2a 2b; do
  awk -v w="$w" '$1 == "W" { want = $2 } $1 == "A" { print $2, "A", w, $2 - want } $1 == "R" { print $2, "R", w }' "$RIG/ho.$w"
done | sort -n >"$RIG/events"
# One line per hand-off: "same|cross ns"; plus "wait CLIENT ns" per acquisition and
# "violation" if two workers ever held the lock at once.
awk '
  $2 == "A" { if (holder != "") print "violation"; holder = $3
              if (last != "" && $3 != lastw) print (substr($3, 1, 1) == substr(lastw, 1, 1) ? "same" : "cross"), $1 - last
              print "wait", substr($3, 1, 1), $4 }
  $2 == "R" { if (holder != $3) print "violation"; holder = ""; last = $1; lastw = $3 }' "$RIG/events" >"$RIG/handoffs"
VIOLATIONS=$(grep -c violation "$RIG/handoffs")
[ "$VIOLATIONS" = 0 ] || fail "$VIOLATIONS exclusion violations under contention"
[ "$(grep -c '^wait' "$RIG/handoffs")" -eq $((4 * ROUNDS)) ] || fail "handoff: missing acquisitions"
handoff_stat() { # same|cross P -> ms
  awk -v k="$1" '$1 == k { printf "%.2f\n", $2 / 1e6 }' "$RIG/handoffs" | pct "$2"
}
wait_stat() { awk -v c="$1" '$1 == "wait" && $2 == c { printf "%.2f\n", $3 / 1e6 }' "$RIG/handoffs" | pct "$2"; }

# Polling load: a holder on client 1 sits on the lock HOLD_MS; two waiters on
# client 2, whose keeper is traced; share ops per second while it waits.
POLLDIR=$RIG/run-poll
if start_traced_keeper "$POLLDIR"; then
  UUIDLOCK_RUNTIME_DIR=$RIG/run1 LD_PRELOAD=$SHIM "$MB" hold "$C1/p" "$HOLD_MS" >"$RIG/holder" &
  holder=$!
  until grep -q '^A' "$RIG/holder" 2>/dev/null; do sleep 0.01; done
  wpids=()
  for w in a b; do
    UUIDLOCK_RUNTIME_DIR=$POLLDIR LD_PRELOAD=$SHIM "$MB" hold "$C2/p" 0 >/dev/null & wpids+=($!)
  done
  wait "$holder" || fail "holder"
  for p in "${wpids[@]}"; do wait "$p" || fail "waiter"; done
  stop_traced_keeper "$POLLDIR"
  RELEASED=$(awk '$1 == "R" { print $2 }' "$RIG/holder")
  # ops on the share from the first one to the holder's release
  read -r POLL_OPS POLL_TRIES POLL_SECS < <(awk -v c2="<$C2/" -v q2="\"$C2/" -v end="$RELEASED" '
    (index($0, c2) || index($0, q2)) && $1 <= end && !/uuidlock: / {
      if (!start) start = $1; n++; if ($0 ~ /O_EXCL/) tries++ }
    END { printf "%d %d %.3f\n", n, tries, end - start }' "$POLLDIR.trace")
fi
fi # ONLY_CACHED

if [ "$ONLY_SHARE" = 0 ]; then
# --- 5. memory ------------------------------------------------------------------------
echo "bench: 5. memory..." >&2
# How taking many locks scales (RETRY_INTERVAL=0.01): wall time and keeper CPU per lock.
ticks() { awk '{ print $14 + $15 }' "/proc/$(cat "$1/keeper.pid")/stat"; }
SCALEDIR=$RIG/run-scale
mkdir -m 0700 "$SCALEDIR"
for n in $SCALE_N; do
  mkdir "$C1/scale$n"
  UUIDLOCK_RUNTIME_DIR=$SCALEDIR LD_PRELOAD=$SHIM "$MB" mem "$C1/scale$n" 1 >/dev/null # keeper up
  c=$(ticks "$SCALEDIR"); t=$(now)
  UUIDLOCK_RUNTIME_DIR=$SCALEDIR LD_PRELOAD=$SHIM "$MB" mem "$C1/scale$n" "$n" >/dev/null || fail "scale $n"
  add "scale.ms.$n" "$(calc %.2f "($(now) - $t) / 1000 / $n")"
  add "scale.cpu.$n" "$(calc %.2f "($(ticks "$SCALEDIR") - $c) * 10 / $n")"
  while compgen -G "$RIG/srv/scale$n/*$SFX" >/dev/null; do sleep 0.05; done # all released
done
# Resident memory. UUIDLOCK_RETRY_INTERVAL=1 here: the keeper parses /proc/locks
# once per interval while it holds anything, which with 1000 locks held would
# load the machine we measure.
MEMDIR=$RIG/run-mem
mkdir -m 0700 "$MEMDIR" && mkdir "$C1/mem"
for ((r = 0; r < (SMOKE ? 1 : 3); r++)); do
  for n in 0 1 "$MEMN"; do
    for v in noshim shim; do
      if [ $v = shim ]; then x=$(UUIDLOCK_RETRY_INTERVAL=1 UUIDLOCK_RUNTIME_DIR=$MEMDIR LD_PRELOAD=$SHIM "$MB" mem "$C1/mem" "$n")
      else x=$(env -u LD_PRELOAD "$MB" mem "$C1/mem" "$n"); fi || fail "mem $n ($v)"
      add "rss.$v.$n" "${x% *}"; add "pss.$v.$n" "${x#* }"
    done
  done
done
KEEPER_HWM=$(awk '/^VmHWM/ { print $2 }' "/proc/$(cat "$MEMDIR/keeper.pid")/status" 2>/dev/null)

fi

# --- the table --------------------------------------------------------------------------
echo
echo "uuidlock bench$([ "$SMOKE" = 1 ] && echo " (SMOKE: tiny counts, targets not judged)"): $RUNS runs alternated, medians; ratio = median of the runs' candidate / no shim"
echo
if [ "$ONLY_SHARE" = 0 ]; then
echo "1. Off the share (local file $LOCAL/f, unmanaged), $N calls per run; target ratio <= 1.05"
echo "  (runs' ratios min-max in brackets)"
printf '  %-24s %8s | %-38s | %-38s\n' "" "no shim" "shim, nothing configured" "shim, UUIDLOCK_PATHS=other dir"
printf '  %-24s %8s | %8s %6s %-11s %-10s | %8s %6s %-11s %-10s\n' call ns/op ns/op ratio "" target ns/op ratio "" target
for c in "${CALLS[@]}"; do
  b=$(med "$c.base") u=$(med "$c.unset") o=$(med "$c.other")
  ru=$(rmed "$c.unset" "$c.base") ro=$(rmed "$c.other" "$c.base")
  printf '  %-24s %8.1f | %8.1f %6s %-11s %-10s | %8.1f %6s %-11s %-10s\n' "${LABEL[$c]}" "$b" \
    "$u" "$ru" "[$(rrange "$c.unset" "$c.base")]" "$(verdict "$ru" 1.05)" "$o" "$ro" "[$(rrange "$c.other" "$c.base")]" "$(verdict "$ro" 1.05)"
done
b=$(med start.base) e=$(med start.empty) u=$(med start.unset) o=$(med start.other)
re=$(rmed start.empty start.base) ru=$(rmed start.unset start.base) ro=$(rmed start.other start.base)
echo
echo "  process start-up, /bin/true x $SPAWNS per run in 4 alternated rounds (posix_spawn + wait); target ratio <= 1.10"
printf '  %-24s %9s %7s %-11s %s\n' "" "us/start" ratio "" target
printf '  %-24s %9.1f\n' "no preload" "$(calc %.1f "$b / 1000")"
printf '  %-24s %9.1f %7s %-11s %s\n' "empty preloaded .so" "$(calc %.1f "$e / 1000")" "$re" "[$(rrange start.empty start.base)]" "(reference: any LD_PRELOAD)"
printf '  %-24s %9.1f %7s %-11s %s\n' "shim, nothing configured" "$(calc %.1f "$u / 1000")" "$ru" "[$(rrange start.unset start.base)]" "$(verdict "$ru" 1.10)"
printf '  %-24s %9.1f %7s %-11s %s\n' "shim, PATHS=a share dir" "$(calc %.1f "$o / 1000")" "$ro" "[$(rrange start.other start.base)]" "$(verdict "$ro" 1.10)"

fi
echo
if [ "$ONLY_CACHED" = 0 ]; then
echo "2./4. On the share, side by side (${UUIDLOCK_TEST_SHARE:-bindfs} client, VERIFY_DELAY=0, RETRY_INTERVAL=0.01), uncontended"
U=$(med side.uuid)
printf '  %-52s %10s %9s\n' "" "us/pair" "x uuidlock"
side_row() {
  [ -n "$2" ] || { printf '  %-52s %10s\n' "$1" "n/a"; return; }
  printf '  %-52s %10s %9s\n' "$1" "$(calc %.1f "$2 / 1000")" "$(calc %.3g "$2 / $U")"
}
side_row "kernel flock, local file (floor)" "$(med flock.base)"
side_row "kernel flock on the share, no shim (not cross-client)" "$(med side.kshare)"
side_row "uuidlock: flock EX+UN in a loop (shim)" "$U"
side_row "py-filelock SoftFileLock acquire+release, in a loop" "$(med side.soft)"
side_row "uuidlock: flock(1) FILE true (2 processes)" "$(med side.flock1)"
if [ -n "$DOTLOCK_FAILS" ]; then printf '  %-52s %10s\n' "dotlockfile -l + -u (2 processes)" "fails on this share"
else side_row "dotlockfile -l + -u (2 processes)" "$(med side.dotlock)"; fi
printf '  %-52s %10s ms with shim, %s ms without\n' "sqlite3 'INSERT ...' (whole process)" \
  "$(calc %.2f "$(med sql.with) / 1e6")" "$(calc %.2f "$(med sql.without) / 1e6")"
echo
if [ -n "${NACQ:-}" ] && [ "$NACQ" -gt 0 ]; then
  echo "  the keeper's work on the share ($NACQ acquire+release pairs, strace): file operations (a read by name,"
  echo "  open O_RDONLY + read + close, is one, like the verification read) and system calls"
  a=$(calc %.2f "$ACQ_OPS / $NACQ") v=$(calc %.2f "$VERIFY_OPS / $NACQ") rl=$(calc %.2f "$REL_OPS / $NACQ")
  ac=$(calc %.2f "$ACQ_CALLS / $NACQ") vc=$(calc %.2f "$VERIFY_CALLS / $NACQ") rc=$(calc %.2f "$REL_CALLS / $NACQ")
  printf '    per acquire: %s ops + verification read %s op (%s + %s calls: [%s ])  target <= 3 + read: %s\n' "$a" "$v" "$ac" "$vc" "$ACQ_SEQ" "$(verdict "$a" 3)"
  printf '    per release: %s ops (%s calls: [%s ])  target <= 2: %s\n' "$rl" "$rc" "$REL_SEQ" "$(verdict "$rl" 2)"
  printf '    and %s looks for another host'"'"'s turn request per acquire (once per turn while re-acquiring back to back)\n' \
    "$(calc %.2f "$LOOKS / $NACQ")"
  echo "    the shimmed program's own calls on the share, per pair:$CLIENT"
fi
[ -n "${SQL_ACQ:-}" ] && echo "  sqlite3 running one INSERT = 2 transactions (the shell's schema read, then the write): $SQL_ACQ sidecar acquisitions, $SQL_REL releases, $SQL_OPS keeper calls on the share"

echo
echo "3. Under contention: 4 workers (2 per client, one keeper per client), $ROUNDS rounds each, hold 2 ms, think 2 ms"
printf '  hand-offs, holder releases -> next holder runs:  same client: %s (p50 %s ms, p90 %s ms)   across clients: %s (p50 %s ms, p90 %s ms)\n' \
  "$(grep -c '^same' "$RIG/handoffs")" "$(handoff_stat same 50)" "$(handoff_stat same 90)" \
  "$(grep -c '^cross' "$RIG/handoffs")" "$(handoff_stat cross 50)" "$(handoff_stat cross 90)"
printf '  wait per acquisition: client 1 p50 %s ms, max %s ms;  client 2 p50 %s ms, max %s ms;  exclusion violations: %s\n' \
  "$(wait_stat 1 50)" "$(wait_stat 1 100)" "$(wait_stat 2 50)" "$(wait_stat 2 100)" "$VIOLATIONS"
if [ -n "${POLL_OPS:-}" ]; then
  printf '  polling load, 2 waiters on client 2 while client 1 holds %s ms: %s share ops in %s s = %s ops/s (%s attempts, %s ops each)\n' \
    "$HOLD_MS" "$POLL_OPS" "$POLL_SECS" "$(calc %.0f "$POLL_OPS / $POLL_SECS")" "$POLL_TRIES" "$(calc %.1f "$POLL_OPS / ($POLL_TRIES > 0 ? $POLL_TRIES : 1)")"
fi
fi # ONLY_CACHED

if [ "$ONLY_SHARE" = 0 ]; then
echo
echo "5. Memory of a process holding N flocks on the share (median of runs)"
printf '  %-10s %12s %12s %8s | %12s %12s %8s\n' locks "VmRSS no shim" "shim" delta "Pss no shim" shim delta
for n in 0 1 "$MEMN"; do
  a=$(med "rss.noshim.$n") b=$(med "rss.shim.$n") c=$(med "pss.noshim.$n") d=$(med "pss.shim.$n")
  printf '  %-10s %10s kB %9s kB %5s kB | %9s kB %9s kB %5s kB\n' "$n" "$a" "$b" "$((b - a))" "$c" "$d" "$((d - c))"
done
[ -n "$KEEPER_HWM" ] && echo "  keeper peak RSS (VmHWM) after holding $MEMN sidecars: $KEEPER_HWM kB"
printf '  taking N managed locks in one process (RETRY_INTERVAL=0.01):'
for n in $SCALE_N; do printf '  N=%s: %s ms/lock, keeper CPU %s ms/lock;' "$n" "$(med "scale.ms.$n")" "$(med "scale.cpu.$n")"; done
echo
fi
# 6. cached holds with the default timings: measures and prints its own rows.
. "$TOP/bench/cached.sh"
[ "$FAILED" = 0 ] || { echo "bench: some measurements FAILED (see above)"; exit 1; }
