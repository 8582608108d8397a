#!/usr/bin/env bash
# bench/instr.sh - why the off-share ratios are what they are: user-space
# instructions per call (valgrind callgrind), system calls per call (strace),
# and for start-up instructions, system calls and page faults of /bin/true.
# Optional (valgrind, strace, linux-perf); see bench/README-notes.md.
# Needs build/microbench and build/bench-empty.so (make bench builds them).
set -u
for t in valgrind strace perf; do
  command -v $t >/dev/null || { echo "instr.sh needs $t (apt-get install valgrind strace linux-perf)" >&2; exit 1; }
done
TOP=$(cd "$(dirname "$0")/.." && pwd)
SHIM=$TOP/build/libuuidlock_shim.so MB=$TOP/build/microbench EMPTY=$TOP/build/bench-empty.so
TMP=$(mktemp -d /tmp/uuidlock-instr.XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
OTHER=/dev/shm # a directory on another device than /tmp: the file is unmanaged, the check runs
N=20000

run() { # VARIANT CMD... : base | unset | other
  local v=$1; shift
  case $v in
    base)  env -u LD_PRELOAD -u UUIDLOCK_PATHS "$@" ;;
    unset) env -u UUIDLOCK_PATHS LD_PRELOAD="$SHIM" "$@" ;;
    other) env UUIDLOCK_PATHS="$OTHER" LD_PRELOAD="$SHIM" "$@" ;;
  esac
}
ir() { # VARIANT CMD... : total user-space instructions (callgrind Ir)
  local v=$1; shift
  run "$v" valgrind --tool=callgrind --callgrind-out-file="$TMP/cg" "$@" >/dev/null 2>"$TMP/err"
  awk '/^summary:/ { print $2 }' "$TMP/cg"
}
syscalls() { # VARIANT CMD... : system calls made (strace passes its environment on)
  local v=$1; shift
  run "$v" strace -f -c -o "$TMP/st" "$@" >/dev/null
  awk '$NF == "total" { print $(NF-2) }' "$TMP/st"
}

echo "per call, user-space instructions (callgrind) and system calls (strace); $N vs $((2 * N)) iterations, difference"
printf '%-10s %8s %8s %8s   %8s %8s %8s\n' call "Ir base" unset other "sys base" unset other
for c in flock setlk getfl openclose dupclose; do
  row=()
  for v in base unset other; do
    a=$(ir $v "$MB" "$c" "$TMP/f" $N) b=$(ir $v "$MB" "$c" "$TMP/f" $((2 * N)))
    row+=("$(awk -v a="$a" -v b="$b" -v n=$N 'BEGIN { printf "%.0f", (b - a) / (1.1 * n) }')")
  done
  for v in base unset other; do
    a=$(syscalls $v "$MB" "$c" "$TMP/f" $N) b=$(syscalls $v "$MB" "$c" "$TMP/f" $((2 * N)))
    row+=("$(awk -v a="$a" -v b="$b" -v n=$N 'BEGIN { printf "%.1f", (b - a) / (1.1 * n) }')")
  done
  printf '%-10s %8s %8s %8s   %8s %8s %8s\n' "$c" "${row[@]}"
done

echo
echo "start-up of /bin/true: user-space instructions, system calls, page faults"
for p in - "$EMPTY" "$SHIM"; do
  pre=$p; [ "$p" = - ] && pre=
  i=$(LD_PRELOAD=$pre valgrind --tool=callgrind --callgrind-out-file="$TMP/cg" /bin/true 2>/dev/null; awk '/^summary:/ { print $2 }' "$TMP/cg")
  s=$(strace -c -o "$TMP/st" -E "LD_PRELOAD=$pre" /bin/true; awk '$NF == "total" { print $(NF-2) }' "$TMP/st")
  f=$(LD_PRELOAD=$pre perf stat -x, -e page-faults -r 20 /bin/true 2>&1 >/dev/null | awk -F, '{ print $1 }')
  printf '  %-40s %8s Ir %4s syscalls %4s page faults\n' "${p/#-/no preload}" "$i" "$s" "$f"
done
