#!/bin/sh
# Build-time guard for the shim: check-symbols.sh LIB "INTERPOSED..." OBJECTS...
#  - LIB exports exactly the interposed calls (the version script worked);
#  - no gnulib replacement (rpl_fcntl ...) renamed one of our interposers;
#  - no object calls an interposed function by name (that would recurse
#    into our own wrapper): the core uses raw syscalls, the shim REAL().
set -eu
lib=$1 interposed=$2
shift 2
fail() { echo "check-symbols: $lib: $*" >&2; rm -f "$lib"; exit 1; }

exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TtWi]$/ { print $3 }' | sort)
wanted=$(printf '%s\n' $interposed | sort)
[ "$exported" = "$wanted" ] || fail "exports differ from the interposed set:
$(printf '%s\n' "$exported" | tr '\n' ' ')"

if nm "$lib" | awk '{ print $NF }' | grep -E '^rpl_' >/dev/null; then
	fail "gnulib replaced an interposed call: $(nm "$lib" | awk '{ print $NF }' | grep -E '^rpl_' | tr '\n' ' ')"
fi

for obj in "$@"; do
	for sym in $(nm -u "$obj" | awk '{ print $NF }'); do
		for f in $interposed; do
			[ "$sym" = "$f" ] && fail "$obj calls $f by name (use REAL($f) or a raw syscall)"
		done
	done
done
exit 0
