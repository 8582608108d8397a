#!/usr/bin/env bash
# tests/run.sh [SUITE...] - the runner behind `make check`.
#
# Runs every tests/test_*.sh shunit2 suite (or only the named ones), shows
# each suite's output as it runs, and ends with one plain line
# "N passed, N failed"; exits non-zero if anything failed.
# Environment: UUIDLOCK_TEST_PRELOAD (whole LD_PRELOAD for shimmed runs, e.g.
# a sanitizer build) passes through to the suites; UUIDLOCK_TEST_TIMEOUT is
# the per-suite limit in seconds (default 600); UUIDLOCK_SANITIZE="SUITE..."
# runs those suites once more with build/asan/ (ASan+UBSan shim and keeper),
# failing on any sanitizer report; UUIDLOCK_SSHFS="SUITE..." and
# UUIDLOCK_SSHFS_1MS="SUITE..." run those suites again on the sshfs share
# (at 0 and 1 ms added latency).
set -u
here=$(cd "$(dirname "$0")" && pwd)
limit=${UUIDLOCK_TEST_TIMEOUT:-600}

if [ $# -gt 0 ]; then
  suites=()
  for s in "$@"; do
    if [ -f "$s" ]; then suites+=("$s"); else suites+=("$here/${s##*/}"); fi
  done
else
  suites=("$here"/test_*.sh)
fi

# What a suite must not leave behind: mounts, bindfs/sshfs daemons, ssh,
# latency-relay and sshd processes, and keepers of its rigs, which rig.sh
# names /tmp/uuidlock-rig.$UUIDLOCK_RIG_ID.XXXXXX. sshd rewrites its command
# line, but runs the rig's own copy of the binary: found by /proc/PID/exe.
leftovers() {
  local rigs="/tmp/uuidlock-rig\.$UUIDLOCK_RIG_ID\."
  grep -o " ${rigs}[^ ]*" /proc/mounts | sed 's/^ /mount /'
  pgrep -f "^bindfs .*$rigs" | sed 's/^/bindfs pid /'
  pgrep -f "^sshfs .*$rigs" | sed 's/^/sshfs pid /'
  pgrep -f "^ssh .*$rigs" | sed 's/^/ssh pid /'
  pgrep -f "latency-relay .*$rigs" | sed 's/^/latency-relay pid /'
  find /proc -maxdepth 2 -path '/proc/[0-9]*/exe' -lname "/tmp/uuidlock-rig.$UUIDLOCK_RIG_ID.*" \
    2>/dev/null | awk -F/ '{ print "sshd pid " $3 }'
  pgrep -f "uuidlock-keeper .*$rigs" | sed 's/^/keeper pid /'
}

# Count a suite's tests from its shunit2 output. A test's block starts at the
# line shunit2 prints with its name; ASSERT:/shunit2:ERROR lines in it mean it
# failed. Prints "RAN PASSED_BLOCKS VERDICT" (VERDICT: OK, FAILED or NONE).
count() {
  awk '
    /^test[A-Za-z0-9_-]*$/                { cur = $0; bad[cur] = 0; next }
    /^ASSERT:|^shunit2:(ERROR|FATAL)/     { if (cur != "") bad[cur] = 1 }
    /^Ran [0-9]+ tests?\.$/               { ran = $2 }
    /^OK( |$)/                            { verdict = "OK" }
    /^FAILED( |$)/                        { verdict = "FAILED" }
    END {
      for (t in bad) if (!bad[t]) good++
      printf "%d %d %s\n", ran, good, (ran == "" ? "NONE" : verdict == "" ? "FAILED" : verdict)
    }' "$1"
}

total_pass=0 total_fail=0 report=()
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT
[ -n "${UUIDLOCK_TEST_PRELOAD:-}" ] && echo "shimmed runs preload: $UUIDLOCK_TEST_PRELOAD"

i=0
# run_suite SUITE [LABEL]: runs one suite, adds to the totals.
run_suite() {
  local suite=$1 name=${2:-${1##*/}}
  echo "=== $name"
  export UUIDLOCK_RIG_ID=r$$s$((i += 1))
  local start pid rc secs ran good verdict note pass fail left line what x y
  start=$EPOCHREALTIME
  # Output goes to a file, followed live by tail: a stray process holding
  # the suite's stdout open can then not hang the runner.
  SHUNIT_COLOR=none timeout -k 10 "$limit" bash "$suite" >"$log" 2>&1 </dev/null &
  pid=$!
  tail -n +1 -s 0.1 -f --pid="$pid" "$log"
  wait "$pid"; rc=$?
  secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')

  read -r ran good verdict < <(count "$log")
  note=
  if [ "$verdict" = NONE ]; then
    pass=0 fail=1 note=" (no shunit2 summary, exit $rc)"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (timed out after ${limit}s)"
  else
    pass=$(( good < ran ? good : ran )); fail=$(( ran - pass ))
    if [ "$fail" -eq 0 ] && { [ "$verdict" != OK ] || [ "$rc" -ne 0 ]; }; then
      fail=1 pass=$(( ran > 0 ? ran - 1 : 0 )) note=" ($verdict, exit $rc)"
    fi
  fi
  left=$(leftovers)
  if [ -n "$left" ]; then
    printf '%s left behind (now removed):\n%s\n' "$name" "$left"
    while read -r what x y; do
      case $what in
        mount) fusermount3 -u -z "$x" ;;
        *) kill -KILL "$y" 2>/dev/null ;;  # a child may die with its parent
      esac
    done <<<"$left"
    fail=$((fail + 1)) note+=" (left processes or mounts behind)"
  fi

  line="$name: $pass passed, $fail failed in ${secs}s$note"
  echo "--- $line"; echo
  report+=("$line")
  total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail))
}

for suite in "${suites[@]}"; do run_suite "$suite"; done

# The same suites on the other kind of share: sshfs (a real network
# filesystem over a private sshd), and with 1 ms added per round trip.
for suite in ${UUIDLOCK_SSHFS:-}; do
  UUIDLOCK_TEST_SHARE=sshfs run_suite "$here/$suite" "$suite (sshfs)"
done
for suite in ${UUIDLOCK_SSHFS_1MS:-}; do
  UUIDLOCK_TEST_SHARE=sshfs UUIDLOCK_TEST_LATENCY_MS=1 run_suite "$here/$suite" "$suite (sshfs, 1 ms)"
done

# The sanitizer run: the ASan runtime must come first in LD_PRELOAD; reports
# go to files (the keeper's stderr is /dev/null), and any report fails.
if [ -n "${UUIDLOCK_SANITIZE:-}" ]; then
  top=$(cd "$here/.." && pwd)
  sanlogs=$(mktemp -d) || exit 1
  export UUIDLOCK_TEST_PRELOAD="$(gcc -print-file-name=libasan.so) $top/build/asan/libuuidlock_shim.so"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:verify_asan_link_order=0:log_path=$sanlogs/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$sanlogs/ubsan"
  for suite in $UUIDLOCK_SANITIZE; do run_suite "$here/$suite" "$suite (asan+ubsan)"; done
  if [ -n "$(ls -A "$sanlogs")" ]; then
    echo "sanitizer reports:"; cat "$sanlogs"/*
    total_fail=$((total_fail + 1)) report+=("sanitizer reports found: 1 failed")
  fi
  rm -rf "$sanlogs"
fi

printf '%s\n' "${report[@]}"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
