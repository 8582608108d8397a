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
    [ -z "$(find "$RIG/srv" -name '*.lock')" ] && return 0
    sleep 0.01
  done
  assert_no_sidecars
}

keeper_pid() { cat "$UUIDLOCK_RUNTIME_DIR/keeper.pid"; }

# kill_keeper_and_holder: SIGKILL both, as a crash would, and wait until the
# keeper is really gone (or a zombie: PID 1 here may not reap orphans).
kill_keeper_and_holder() {
  local k i
  k=$(keeper_pid)
  kill -KILL "$k" "$HOLDER"; wait "$HOLDER" 2>/dev/null
  for i in $(seq 500); do
    [ -r "/proc/$k/stat" ] || return 0
    case $(awk '{ print $3 }' "/proc/$k/stat" 2>/dev/null) in Z|X|'') return 0 ;; esac
    sleep 0.01
  done
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
between() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x >= lo && x <= hi) }'; }
