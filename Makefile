# uuidlock — see README.md.  `make`, `make check`, `make demo`, `make clean`.

CC      ?= cc
CFLAGS  ?= -O2 -g
# Diagnostics are cut to fit their buffers on purpose: no truncation warnings.
WARN    := -Wall -Wextra -Werror -Wno-format-truncation
# gnulib's header-only modules straight from Debian's package.  -idirafter,
# not -I: that folder also holds regex.h, error.h ... which must not shadow
# glibc's.  Never -D_FILE_OFFSET_BITS=64: it would redirect fcntl to fcntl64
# and define our wrapper twice.
GNULIB  := /usr/share/gnulib/lib
CPPFLAGS_ALL := -std=gnu11 -D_GNU_SOURCE -idirafter $(GNULIB) $(WARN)
PIC     := -fPIC -fvisibility=hidden

PREFIX  ?= /usr/local
LIBDIR  := $(PREFIX)/lib/uuidlock
MANDIR  := $(PREFIX)/share/man

CORE_SRC := $(wildcard src/core/*.c)
# The part of the core the preloaded library needs: not the protocol itself
# (the keeper runs it), so programs don't load libuuid for nothing.
SHIM_CORE_SRC := src/core/client.c src/core/config.c src/core/log.c src/core/mountinfo.c src/core/netfs.c
SHIM_SRC := $(wildcard src/shim/*.c)
KEEPER_SRC := $(wildcard src/keeper/*.c)
HEADERS := $(wildcard src/*/*.h)

# The calls the shim interposes.  No object may call one of them by name:
# the core uses raw system calls, the shim goes through REAL().
INTERPOSED := flock fcntl fcntl64 __fcntl lockf lockf64 close fclose dup dup2 dup3 close_range closefrom

# Debian packages that building, testing and the demo need.
DEB_PACKAGES := gcc make libc6-dev uuid-dev gnulib shunit2 bindfs fuse3 util-linux \
	sqlite3 python3 perl procps clang libclang-rt-14-dev openssh-server openssh-client sshfs \
	libpython3.11-testsuite

.PHONY: all asan fuzz check demo clean deps install uninstall
all: build/libuuidlock_shim.so build/uuidlock-keeper build/uuidlock build/lockdrv build/lockdrv64 \
	build/early_lock.so build/late_op.so build/latency-relay

# ---- one build per flavour: normal in build/, sanitizers in build/asan/ ----
define flavour
$(1)/obj/%.o: src/%.c $(HEADERS) | deps-headers
	@mkdir -p $$(dir $$@)
	$(CC) $(CPPFLAGS_ALL) $(PIC) $(CFLAGS) $(2) -c -o $$@ $$<

$(1)/libuuidlock_shim.so: $(patsubst src/%.c,$(1)/obj/%.o,$(SHIM_CORE_SRC) $(SHIM_SRC)) src/shim/shim.map
	$(CC) -shared $(CFLAGS) $(2) -Wl,--version-script=src/shim/shim.map -Wl,-z,defs \
		-o $$@ $$(filter %.o,$$^) -ldl -lpthread
	@sh tests/check-symbols.sh $$@ "$(INTERPOSED)" $$(filter %.o,$$^)

$(1)/uuidlock-keeper: $(patsubst src/%.c,$(1)/obj/%.o,$(CORE_SRC) $(KEEPER_SRC))
	$(CC) $(CFLAGS) $(2) -pthread -o $$@ $$^ -luuid
endef

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
$(eval $(call flavour,build,))
$(eval $(call flavour,build/asan,$(SAN)))

asan: build/asan/libuuidlock_shim.so build/asan/uuidlock-keeper

# The command knows the library's absolute path (never a search, never "."):
# build/uuidlock the one in build/, the installed one the installed one.
CORE_OBJ := $(patsubst src/%.c,build/obj/%.o,$(CORE_SRC))
build/uuidlock: src/cli/uuidlock.c $(CORE_OBJ) $(HEADERS)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -DSHIM_PATH='"$(abspath build)/libuuidlock_shim.so"' \
		-o $@ $< $(CORE_OBJ) -luuid
build/installed/uuidlock: src/cli/uuidlock.c $(CORE_OBJ) $(HEADERS) FORCE
	@mkdir -p build/installed
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -DSHIM_PATH='"$(LIBDIR)/libuuidlock_shim.so"' \
		-o $@ $< $(CORE_OBJ) -luuid
.PHONY: FORCE
FORCE:

install: build/libuuidlock_shim.so build/uuidlock-keeper build/installed/uuidlock
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man7
	install -m 0644 build/libuuidlock_shim.so $(DESTDIR)$(LIBDIR)/libuuidlock_shim.so
	install -m 0755 build/uuidlock-keeper $(DESTDIR)$(LIBDIR)/uuidlock-keeper
	install -m 0755 build/installed/uuidlock $(DESTDIR)$(PREFIX)/bin/uuidlock
	install -m 0644 man/uuidlock.1 $(DESTDIR)$(MANDIR)/man1/uuidlock.1
	install -m 0644 man/libuuidlock_shim.7 $(DESTDIR)$(MANDIR)/man7/libuuidlock_shim.7

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libuuidlock_shim.so $(DESTDIR)$(LIBDIR)/uuidlock-keeper \
		$(DESTDIR)$(PREFIX)/bin/uuidlock $(DESTDIR)$(MANDIR)/man1/uuidlock.1 \
		$(DESTDIR)$(MANDIR)/man7/libuuidlock_shim.7
	-rmdir $(DESTDIR)$(LIBDIR)

build/lockdrv: tests/lockdrv.c | deps-headers
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -o $@ $<

# The test rig's added network latency for sshfs (UUIDLOCK_TEST_LATENCY_MS).
build/latency-relay: tests/latency-relay.c | deps-headers
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -o $@ $<

# A library whose constructor locks before the shim's constructor runs.
build/early_lock.so: tests/early_lock.c
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -fPIC -shared -o $@ $<

# A breaker whose unlink or rename lands late (test_crash.sh), preloaded
# into a keeper the test starts itself.
build/late_op.so: tests/late_op.c
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -fPIC -shared -o $@ $< -ldl

# The same driver as a program built with 64-bit off_t calls fcntl64/lockf64.
build/lockdrv64: tests/lockdrv.c | deps-headers
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) -D_FILE_OFFSET_BITS=64 $(CFLAGS) -o $@ $<

# libFuzzer targets for what others control: sidecar content, /proc/locks,
# the configuration.  tests/test_fuzz.sh runs them for a bounded time.
FUZZ_CORE := src/core/sidecar.c src/core/proclocks.c src/core/hostid.c src/core/client.c src/core/config.c src/core/log.c
fuzz: build/fuzz/fuzz_sidecar build/fuzz/fuzz_config
build/fuzz/%: tests/fuzz/%.c $(FUZZ_CORE) $(HEADERS) | deps-headers
	@mkdir -p build/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -idirafter $(GNULIB) -Wall -Wextra -Werror \
		-o $@ $< $(FUZZ_CORE) -luuid

# The headers we compile against must be there before any compilation.
.PHONY: deps-headers
deps-headers:
	@test -f /usr/include/uuid/uuid.h -a -f $(GNULIB)/intprops.h || $(MAKE) --no-print-directory deps

# ---- Debian packages: installed when we are root, else named ----
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else \
		echo "missing Debian packages; run as root:  apt-get install $$missing" >&2; exit 1; \
	fi

# Every suite on the bindfs share; the cross-client suites again on sshfs (and
# the flock and mounts suites with 1 ms added per round trip); the flock, POSIX,
# crash and mounts suites again with the sanitizer build.
check: deps bench-deps all asan fuzz build/microbench build/bench-empty.so
	@UUIDLOCK_SSHFS="test_flock.sh test_posix.sh test_crash.sh test_cli.sh test_idle.sh test_wal.sh test_mounts.sh" \
	 UUIDLOCK_SSHFS_1MS="test_flock.sh test_idle.sh test_mounts.sh" \
	 UUIDLOCK_SANITIZE="test_flock.sh test_posix.sh test_crash.sh test_idle.sh test_wal.sh test_mounts.sh test_keeper.sh" tests/run.sh

demo: deps all
	@tests/demo.sh

clean:
	rm -rf build

# ---- benchmarks: `make bench` (bench/run.sh; `bench/run.sh --smoke` < 20 s) ----
# linux-perf and valgrind are optional: only for looking into a missed target.
BENCH_PACKAGES := python3-filelock liblockfile-bin strace
.PHONY: bench bench-deps
bench: deps bench-deps all build/microbench build/bench-empty.so
	@bench/run.sh
	@UUIDLOCK_TEST_SHARE=sshfs BENCH_ONLY=share bench/run.sh
	@UUIDLOCK_TEST_SHARE=sshfs UUIDLOCK_TEST_LATENCY_MS=1 BENCH_ONLY=share bench/run.sh

build/microbench: bench/microbench.c | deps-headers
	@mkdir -p build
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS) -o $@ $<

# An empty preloaded library: the start-up cost any LD_PRELOAD has.
build/bench-empty.so: bench/empty.c
	@mkdir -p build
	$(CC) -shared $(PIC) $(CFLAGS) -o $@ $<

bench-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(BENCH_PACKAGES)"
