#!/usr/bin/env bash
# tests/demo.sh - behind `make demo`: the lost-update workload on the fake
# share (two bindfs clients), without and then with the shim.
# 4 workers (2 per client) x 100 locked read-increment-write cycles each.
# shellcheck source=tests/rig.sh
. "$(dirname "$0")/rig.sh"

n=100 expected=400
trap rig_teardown EXIT
rig_setup || exit 1

# run LABEL PRELOAD : one workload, one table row.
run() {
  local t0 got secs note=''
  t0=$EPOCHREALTIME
  got=$(run_counter_workload "$2" "$n") || note=' (a worker failed)'
  secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  printf '%-14s %8d %8s %8s %8ss%s\n' "$1" "$expected" "$got" "$((expected - got))" "$secs" "$note"
}

echo "uuidlock demo: 4 workers (2 on each of 2 clients) x $n increments under flock(1)"
printf '%-14s %8s %8s %8s %9s\n' "" expected got lost time
run "without shim" ""
if [ -f "$SHIM" ]; then
  run "with shim" "$SHIM"
else
  printf '%-14s %s\n' "with shim" "(not built: $SHIM missing; run make)"
fi
