# shellcheck shell=bash
# tests/rig.sh - test rig sourced by every shunit2 suite (and by demo.sh).
#
# It fakes a network share on one machine: two FUSE mounts ($C1, $C2) of one
# directory ($RIG/srv) behave like two client hosts whose kernel locks do not
# see each other. See /work/shared/FACTS.md for the measurements behind it.
#
# UUIDLOCK_TEST_SHARE picks the kind of client mount (read by rig_setup):
#   bindfs  (default) two bindfs mounts of $RIG/srv.
#   sshfs   two sshfs mounts of $RIG/srv, each over its own ssh connection to
#           a private sshd (packages openssh-server openssh-client sshfs).
# UUIDLOCK_TEST_LATENCY_MS (sshfs only; default 0, fractions allowed) adds
# that much to every round trip (half each way) with build/latency-relay.
#
# Typical suite:
#   . "$(dirname "$0")/rig.sh"
#   setUp()    { rig_setup; }
#   tearDown() { rig_teardown; }
#   test_x()   { shimmed "$LOCKDRV" ...; }
#   . shunit2

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHIM=$TOP/build/libuuidlock_shim.so
LOCKDRV=$TOP/build/lockdrv
# The whole LD_PRELOAD value used by `shimmed`; the sanitizer run replaces it
# (e.g. "libasan.so.8 .../libuuidlock_shim.so").
SHIM_PRELOAD=${UUIDLOCK_TEST_PRELOAD:-$SHIM}
export TOP SHIM LOCKDRV SHIM_PRELOAD

# Per-rig state (reset by rig_teardown).
RIG=
_RIG_SHARE=       # bindfs or sshfs
_RIG_FUSE_PIDS=   # the two client daemons

# Mount options: no FUSE caching, or one client sees stale names/attributes.
_RIG_BINDFS_OPTS=entry_timeout=0,attr_timeout=0,negative_timeout=0
# sshfs also caches names and attributes itself (20 s by default):
# dir_cache=no turns that off (sshfs 3.x; 2.x called it cache=no).  Writes stay
# asynchronous (no sshfs_sync), as on a real share: they have reached the
# server by the time close() or fsync() returns.
_RIG_SSHFS_OPTS=$_RIG_BINDFS_OPTS,dir_cache=no

# --- small helpers ----------------------------------------------------------

_rig_log() { echo "rig: $*" >&2; }

# Microseconds since the epoch (bash 5 EPOCHREALTIME, any decimal separator).
_rig_now_us() { echo "${EPOCHREALTIME/[.,]/}"; }

# Seconds (may be fractional) -> microseconds.
_rig_us() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000000 }'; }

# True while PID exists and is not a zombie (PID 1 here may never reap
# orphans, so a dead orphan can linger as a zombie).
_rig_alive() {
  local st
  [ -r "/proc/$1/stat" ] || return 1
  st=$(<"/proc/$1/stat") 2>/dev/null || return 1
  st=${st##*) }            # field 3, after "pid (comm) "
  [ "${st%% *}" != Z ]
}

# _rig_wait_gone TIMEOUT_S PID... : wait until none of the PIDs is alive.
_rig_wait_gone() {
  local end p left
  end=$(( $(_rig_now_us) + $(_rig_us "$1") )); shift
  while :; do
    left=
    for p in "$@"; do _rig_alive "$p" && left+=" $p"; done
    [ -z "$left" ] && return 0
    [ "$(_rig_now_us)" -ge "$end" ] && return 1
    sleep 0.01
  done
}

# _rig_kill GRACE_S PID... : SIGTERM, wait up to GRACE_S, then SIGKILL.
_rig_kill() {
  local grace=$1 p live=(); shift
  for p in "$@"; do
    [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] && continue
    _rig_alive "$p" && live+=("$p")
  done
  [ ${#live[@]} -eq 0 ] && return 0
  kill -TERM "${live[@]}" 2>/dev/null
  _rig_wait_gone "$grace" "${live[@]}" && return 0
  kill -KILL "${live[@]}" 2>/dev/null
  _rig_wait_gone 5 "${live[@]}"
}

# PID and all its descendants, children first listed after their parent.
_rig_tree() {
  local c
  echo "$1"
  for c in $(pgrep -P "$1"); do _rig_tree "$c"; done
}

# PIDs of processes whose environment carries UUIDLOCK_RIG=$RIG, i.e. anything
# a test started (even double-forked or setsid'd), unless it cleared its env;
# not the bindfs/sshfs daemons (unmounted separately). Pure bash on purpose: an
# external grep would itself carry the variable.
_rig_env_pids() {
  local d kv
  for d in /proc/[0-9]*; do
    case " $_RIG_FUSE_PIDS " in *" ${d#/proc/} "*) continue ;; esac
    while IFS= read -r -d '' kv; do
      if [ "$kv" = "UUIDLOCK_RIG=$RIG" ]; then echo "${d#/proc/}"; break; fi
    done 2>/dev/null <"$d/environ"
  done
}

# _rig_ssh_prepare: $RIG/ssh with throw-away host and user keys, a private
# sshd_config and the ssh_config sshfs uses.  Nothing listens anywhere: ssh's
# ProxyCommand runs `sshd -i` (inetd mode), which speaks SSH over its pipe to
# ssh and has no socket at all, so there is no port to pick or leak and no
# network namespace to set up.  Nothing reads or writes ~/.ssh (ssh -F).
_rig_ssh_prepare() {
  local s=$RIG/ssh ms=${UUIDLOCK_TEST_LATENCY_MS:-0} proxy user
  user=$(id -un)
  mkdir -m 0700 "$s" || return 1
  ssh-keygen -q -t ed25519 -N '' -C uuidlock-rig-host -f "$s/host_key" &&
    ssh-keygen -q -t ed25519 -N '' -C uuidlock-rig-user -f "$s/id" || return 1
  cp "$s/id.pub" "$s/authorized_keys" &&
    echo "rig $(cat "$s/host_key.pub")" >"$s/known_hosts" || return 1
  # Our own copy of sshd: sshd rewrites its command line ("sshd: root@notty"),
  # but /proc/PID/exe still names the copy, so rig_teardown and tests/run.sh
  # can tell this rig's sshd processes from any other.
  cp /usr/sbin/sshd "$s/sshd" || return 1
  # sshd's privilege separation directory is compiled in; the package creates
  # it only when its service starts (never, here).
  [ -d /run/sshd ] || mkdir -m 0755 /run/sshd || [ -d /run/sshd ] || return 1
  # Root by key only.  StrictModes off: $RIG is under /tmp, world-writable.
  cat >"$s/sshd_config" <<EOF || return 1
HostKey $s/host_key
AuthorizedKeysFile $s/authorized_keys
AllowUsers $user
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
LogLevel ERROR
EOF
  # -e: sshd logs to stderr, which ends up in $RIG/sshfs.log.
  proxy="$s/sshd -i -e -f $s/sshd_config"
  case $ms in
    0|0.0) ;;
    ''|*[!0-9.]*|*.*.*|.) _rig_log "UUIDLOCK_TEST_LATENCY_MS is not a number of ms: '$ms'"; return 1 ;;
    *)
      [ -x "$TOP/build/latency-relay" ] || { _rig_log "no build/latency-relay (make)"; return 1; }
      proxy="$TOP/build/latency-relay $ms $proxy" ;;
  esac
  cat >"$s/ssh_config" <<EOF
Host rig
  User $user
  ProxyCommand $proxy
  IdentityFile $s/id
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile $s/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  CheckHostIP no
  BatchMode yes
  ControlMaster no
  ControlPath none
  Compression no
  LogLevel ERROR
EOF
}

# _rig_mount_start DST : start one client daemon (bindfs or sshfs) of
# $RIG/srv on DST, in the background; its PID goes to _RIG_FUSE_PIDS.
_rig_mount_start() {
  local pid
  mkdir -p "$1" || return 1
  # In a subshell so the daemon is not a job of the test shell (rig_teardown's
  # "kill leftover jobs" must not hit it); -f keeps it in the foreground, so
  # $! is the daemon itself: no guessing its PID from the process table.
  if [ "$_RIG_SHARE" = sshfs ]; then
    # Untagged: ssh and sshd (sshfs's children) must survive rig_teardown's
    # killing of tagged processes, until the unmount ends them.
    pid=$(env -u UUIDLOCK_RIG sshfs -f -F "$RIG/ssh/ssh_config" -o "$_RIG_SSHFS_OPTS" \
            "rig:$RIG/srv" "$1" </dev/null >>"$RIG/sshfs.log" 2>&1 & echo $!)
  else
    pid=$(bindfs -f -o "$_RIG_BINDFS_OPTS" "$RIG/srv" "$1" \
            </dev/null >>"$RIG/bindfs.log" 2>&1 & echo $!)
  fi
  _RIG_FUSE_PIDS+=" $pid"
}

# _rig_mount_wait DST PID : wait until DST is mounted by PID (10 s at most).
_rig_mount_wait() {
  local end
  end=$(( $(_rig_now_us) + 10000000 ))
  until mountpoint -q "$1"; do
    if ! _rig_alive "$2" || [ "$(_rig_now_us)" -ge "$end" ]; then
      _rig_log "$_RIG_SHARE failed to mount $1:"; cat "$RIG/$_RIG_SHARE.log" >&2
      return 1
    fi
    sleep 0.01
  done
}

# PIDs of the sshfs rig's processes: sshfs and ssh (double-forked by sshfs,
# so not its child) and latency-relay name $RIG/ssh/ in their command lines;
# sshd runs the copy in $RIG/ssh.
_rig_ssh_pids() {
  [ -d "$RIG/ssh" ] || return 0
  pgrep -f -- "$RIG/ssh/"
  find /proc -maxdepth 2 -path '/proc/[0-9]*/exe' -lname "$RIG/ssh/*" 2>/dev/null |
    awk -F/ '{ print $3 }'
}

_rig_umount() { # DIR : unmount, retrying while busy; lazy as a last resort
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    mountpoint -q "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  _rig_log "$1 still busy; lazy unmount"
  fusermount3 -u -z "$1"
}

# --- public API -----------------------------------------------------------

# The sidecar suffix the shim uses by default (UUIDLOCK_SUFFIX unset): tests
# name sidecars as "$RIG/srv/f$SFX", guards "f$SFX.break", requests "f$SFX.want".
SFX=.uuidlock

# rig_setup: new share + two clients + private keeper runtime dir.
rig_setup() {
  rig_teardown   # a previous rig left by a failed test
  # UUIDLOCK_RIG_ID: set by run.sh so it can find what a suite left behind.
  RIG=$(mktemp -d "/tmp/uuidlock-rig.${UUIDLOCK_RIG_ID:+$UUIDLOCK_RIG_ID.}XXXXXX") || return 1
  C1=$RIG/c1 C2=$RIG/c2
  export RIG C1 C2
  export UUIDLOCK_RIG=$RIG   # tags every process the test starts (teardown)
  mkdir "$RIG/srv" && mkdir -m 0700 "$RIG/run" || return 1
  _RIG_SHARE=${UUIDLOCK_TEST_SHARE:-bindfs}
  case $_RIG_SHARE in
    bindfs) [ "${UUIDLOCK_TEST_LATENCY_MS:-0}" = 0 ] ||
              { _rig_log "UUIDLOCK_TEST_LATENCY_MS needs UUIDLOCK_TEST_SHARE=sshfs"; return 1; } ;;
    sshfs) _rig_ssh_prepare || return 1 ;;
    *) _rig_log "UUIDLOCK_TEST_SHARE is bindfs or sshfs, not '$_RIG_SHARE'"; return 1 ;;
  esac
  # Both clients mount at once (an sshfs mount is mostly ssh's handshake).
  _rig_mount_start "$C1" && _rig_mount_start "$C2" || return 1
  # shellcheck disable=SC2086 # two PIDs
  set -- $_RIG_FUSE_PIDS
  _rig_mount_wait "$C1" "$1" && _rig_mount_wait "$C2" "$2" || return 1
  export UUIDLOCK_RUNTIME_DIR=$RIG/run
  export UUIDLOCK_VERIFY_DELAY=0.01 UUIDLOCK_RETRY_INTERVAL=0.01
  # A breaker deletes a stale sidecar only if re-reading it (about 5 round
  # trips) took less than half the verification delay; with added latency
  # 0.01 s would never break anything: give it 20 round trips more.
  if [ "${UUIDLOCK_TEST_LATENCY_MS:-0}" != 0 ]; then
    UUIDLOCK_VERIFY_DELAY=$(awk -v ms="$UUIDLOCK_TEST_LATENCY_MS" 'BEGIN { print 0.01 + ms * 0.02 }')
  fi
  export UUIDLOCK_PATHS="$C1:$C2"
  # Most tests check that a lock is free on every client once released: no
  # idle holds there.  The tests of idle holds (and the default timings)
  # set UUIDLOCK_LINGER themselves.
  export UUIDLOCK_LINGER=0
  # Settings a caller's environment must not leak into the tests.
  unset UUIDLOCK_TIMEOUT UUIDLOCK_PREFIX UUIDLOCK_SUFFIX
}

# rig_teardown: stop everything the test started, unmount, remove $RIG.
# Idempotent; safe after a half-done rig_setup or a test that died midway.
rig_teardown() {
  [ -n "$RIG" ] || return 0
  local p jobpids='' pidfile=$RIG/run/keeper.pid

  # A share a test stopped (SIGSTOP) answers again: whatever waits on it
  # can end, and its unmount too.
  # shellcheck disable=SC2086
  [ -z "$_RIG_FUSE_PIDS" ] || kill -CONT $_RIG_FUSE_PIDS 2>/dev/null
  # Keeper first: it may hold files on the share open.
  if [ -r "$pidfile" ]; then
    p=$(<"$pidfile")
    case $p in ''|*[!0-9]*) ;; *) _rig_kill 5 "$p" ;; esac
  fi
  # Background jobs the test left, with their children; then anything else
  # carrying the rig's tag (daemons, setsid'd helpers) and any keeper for this
  # rig (one with no pid file yet; the keeper clears its environment).
  for p in $(jobs -p); do jobpids+=" $(_rig_tree "$p")"; done
  # shellcheck disable=SC2086,SC2046 # word splitting wanted
  _rig_kill 2 $jobpids
  wait 2>/dev/null   # reap our jobs, so they are not left as zombies
  # shellcheck disable=SC2046
  _rig_kill 2 $(_rig_env_pids) $(pgrep -f "uuidlock-keeper .*$RIG/")

  case $PWD/ in "$RIG"/*) cd / || return 1 ;; esac   # our cwd would keep it busy
  # The daemons and their helpers (ssh, [latency-relay,] sshd), listed while
  # they are still there. Unmounting ends them all: sshfs exits, then ssh and
  # sshd see EOF.
  local fuse
  fuse="$_RIG_FUSE_PIDS $(_rig_ssh_pids)"
  _rig_umount "$RIG/c1"; _rig_umount "$RIG/c2"; _rig_umount "$RIG/s2"
  # shellcheck disable=SC2086
  if ! _rig_wait_gone 5 $fuse; then
    _rig_log "${_RIG_SHARE:-bindfs} did not exit after unmount; killing it"
    _rig_kill 1 $fuse
  fi

  # Never rm -rf through a mount that is somehow still there.
  if grep -q " $RIG/" /proc/mounts; then
    _rig_log "still mounted, leaving $RIG"; return 1
  fi
  rm -rf "$RIG"
  RIG='' _RIG_FUSE_PIDS='' _RIG_SHARE=''
  unset UUIDLOCK_RIG UUIDLOCK_RUNTIME_DIR UUIDLOCK_PATHS S2 S2_PID
}

# rig_second_share: a second share, $RIG/srv2, mounted by one client at $S2
# (bindfs, as $C1's kind of client would be; no sshd of its own); its
# daemon's PID is $S2_PID, for tests that stop it (SIGSTOP, as a hung
# server).  rig_teardown lets it go on and unmounts it.
rig_second_share() {
  S2=$RIG/s2
  mkdir -p "$RIG/srv2" "$S2" || return 1
  S2_PID=$(bindfs -f -o "$_RIG_BINDFS_OPTS" "$RIG/srv2" "$S2" \
             </dev/null >>"$RIG/bindfs.log" 2>&1 & echo $!)
  _RIG_FUSE_PIDS+=" $S2_PID"
  export S2 S2_PID
  _rig_mount_wait "$S2" "$S2_PID"
}

# shimmed CMD ARGS... : run CMD with the shim preloaded.
shimmed() { LD_PRELOAD=$SHIM_PRELOAD "$@"; }

# counter_worker CLIENTDIR N : N locked read-increment-write cycles of the
# integer in CLIENTDIR/counter, under util-linux flock(1) on
# CLIENTDIR/counter.lk. The write goes to a temp file renamed over the counter,
# so a reader never sees a half-written file: without a working lock the only
# damage is lost updates (about half of them; FACTS.md). LD_PRELOAD comes from
# the caller's environment. Returns 1 at the first failed cycle.
counter_worker() {
  local dir=$1 n=$2 i
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2016 # expanded by the inner sh
    flock "$dir/counter.lk" sh -c '
      v=$(cat "$1/counter") && [ -n "$v" ] || { echo "rig: read [$v] from $1/counter" >&2; exit 1; }
      echo $((v + 1)) >"$1/counter.tmp.$$" && mv -f "$1/counter.tmp.$$" "$1/counter"
    ' sh "$dir" || { _rig_log "counter_worker $dir: cycle $i failed (status $?)"; return 1; }
  done
}

# run_counter_workload PRELOAD N : 4 workers (2 per client) x N increments
# with LD_PRELOAD=PRELOAD (empty: no shim); echoes the final counter.
# Returns 1 if any worker failed.
run_counter_workload() {
  local preload=$1 n=$2 pids=() p rc=0 c
  echo 0 >"$RIG/srv/counter"
  for c in "$C1" "$C2" "$C1" "$C2"; do
    # stdout to /dev/null: nothing a worker starts (e.g. the keeper) may hold
    # the caller's $(...) pipe open.
    (
      if [ -n "$preload" ]; then export LD_PRELOAD=$preload; else unset LD_PRELOAD; fi
      counter_worker "$c" "$n"
    ) >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "$RIG/srv/counter"
  return $rc
}

# wait_for_file PATH [TIMEOUT_S] : poll until PATH exists; 1 on timeout (10 s).
wait_for_file() {
  local end
  end=$(( $(_rig_now_us) + $(_rig_us "${2:-10}") ))
  until [ -e "$1" ]; do
    [ "$(_rig_now_us)" -ge "$end" ] && return 1
    sleep 0.01
  done
}

# assert_no_sidecars : shunit2 failure if any *$SFX file is left on the share.
assert_no_sidecars() {
  local left
  left=$(cd "$RIG/srv" && find . -name "*$SFX" | sort | tr '\n' ' ')
  [ -z "$left" ] || fail "sidecar lock files left on the share: $left"
}
