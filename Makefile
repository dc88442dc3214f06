# busesnap: libbuse (NBD block devices in user space), the busesnap chunk
# store and server, and the bsnap control tool.
#
# Layout (the folders are the architecture):
#   include/buse.h   the public libbuse API        src/buse/    libbuse
#   src/store/       chunk store (LMDB + XXH3)     src/server/  busesnap
#   tools/           bsnap, busexmp                tests/       test suite
#
# Targets: all, check (installs test deps with apt-get when root),
# check-reliability (crash loops, power loss, fuzzing, soak), check-kernel
# (VM with a real /dev/nbd0), bench, install, format-check.
# SANITIZER=address,undefined builds everything with sanitizers.

PREFIX   ?= /usr/local
DESTDIR  ?=
LIBDIR   ?= $(PREFIX)/lib
BINDIR   ?= $(PREFIX)/bin
SBINDIR  ?= $(PREFIX)/sbin
INCDIR   ?= $(PREFIX)/include
MANDIR   ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# systemd reads /usr/local/lib/systemd/system as well as /lib/systemd/system.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system

# The release, in one place: --version of every program and buse.pc.
# include/buse.h (installed, so it cannot take -D) must say the same.
VERSION  := 2.0.0
ifneq ($(VERSION),$(shell sed -n 's/^\#define BUSE_VERSION_STRING "\(.*\)"/\1/p' include/buse.h))
$(error VERSION $(VERSION) differs from BUSE_VERSION_STRING in include/buse.h)
endif

CC       ?= cc
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wpointer-arith -Wformat=2 -Wno-unused-parameter -Werror
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -pthread -fPIC $(WARN) -Iinclude -D_GNU_SOURCE
LDFLAGS  += -pthread
ifneq ($(SANITIZER),)
CFLAGS   += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SANITIZER)
endif

BUSE_SRC   := $(sort $(wildcard src/buse/*.c))
STORE_SRC  := $(sort $(wildcard src/store/*.c))
SERVER_SRC := $(sort $(wildcard src/server/*.c))
COMMON_OBJ := src/common/common.o
BUSE_OBJ   := $(BUSE_SRC:.c=.o)
STORE_OBJ  := $(STORE_SRC:.c=.o)
SERVER_OBJ := $(SERVER_SRC:.c=.o)
UNIT_SRC   := $(sort $(wildcard tests/unit/test-*.c))
UNIT_BIN   := $(UNIT_SRC:.c=)

SOVERSION  := 2
LIBS_BUSE  := -lnl-genl-3 -lnl-3 -lgnutls -luring
LIBS_STORE := -llmdb -lxxhash -luuid

# Programs are built once their sources exist (the tree grows part by part).
PROGRAMS := $(if $(wildcard tools/busexmp.c),busexmp) \
            $(if $(SERVER_SRC),busesnap) $(if $(wildcard tools/bsnap.c),bsnap)
UNIT_BIN := $(if $(STORE_SRC),$(UNIT_BIN))

all: libbuse.a libbuse.so $(PROGRAMS) $(UNIT_BIN) buse.pc

# netlink headers for libnl
src/buse/%.o: CFLAGS += $(shell pkg-config --cflags libnl-genl-3.0 2>/dev/null || echo -I/usr/include/libnl3)

libbuse.a: $(BUSE_OBJ)
	rm -f $@ && ar rcs $@ $^
libbuse.so: $(BUSE_OBJ) src/buse/libbuse.map
	$(CC) -shared -Wl,-soname,libbuse.so.$(SOVERSION) \
	    -Wl,--version-script=src/buse/libbuse.map -o $@ $(BUSE_OBJ) $(LDFLAGS) $(LIBS_BUSE)
libstore.a: $(STORE_OBJ)
	rm -f $@ && ar rcs $@ $^

busexmp: tools/busexmp.o $(COMMON_OBJ) libbuse.a
	$(CC) -o $@ $^ $(LDFLAGS) $(LIBS_BUSE)
busesnap: $(SERVER_OBJ) $(COMMON_OBJ) libstore.a libbuse.a
	$(CC) -o $@ $^ $(LDFLAGS) $(LIBS_STORE) $(LIBS_BUSE) -ljansson
bsnap: tools/bsnap.o $(COMMON_OBJ)
	$(CC) -o $@ $^ $(LDFLAGS) -luuid -ljansson

tests/unit/test-%: tests/unit/test-%.c libstore.a libbuse.a
	$(CC) $(CFLAGS) -Isrc -o $@ $^ $(LDFLAGS) $(LIBS_STORE) $(LIBS_BUSE)

src/server/%.o src/common/%.o tools/%.o: CFLAGS += -Isrc -DBUSESNAP_VERSION='"$(VERSION)"'
src/server/main.o tools/bsnap.o tools/busexmp.o: Makefile

buse.pc: buse.pc.in Makefile
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' $< > $@

# Header dependencies (kept simple: every object depends on every header).
HEADERS := $(wildcard include/*.h src/*/*.h)
$(BUSE_OBJ) $(STORE_OBJ) $(SERVER_OBJ) $(COMMON_OBJ) tools/bsnap.o tools/busexmp.o: $(HEADERS)

# Targets users run on a fresh machine install what they need first.
deps:
	tests/deps.sh

check:
	tests/deps.sh
	$(MAKE) all
	tests/run-tests.sh

# The longer tier: crash loops, power-loss simulation, full disk, libFuzzer
# runs, soak and valgrind (bounded; CI runs it once, without sanitizers).
check-reliability:
	tests/deps.sh
	$(MAKE) all reliability-tools
	tests/run-tests.sh --tier reliability

check-kernel:
	tests/deps.sh
	$(MAKE) all
	tests/kernel/run.sh

bench:
	tests/deps.sh --build
	$(MAKE) all bench/store-api
	bench/run.sh

# The main job on an embedded default: an 8 GiB disk in ./busesnap.db,
# served on ./busesnap.sock (bsnap finds the server's control socket).
SERVE_IMAGE ?= busesnap.db
SERVE_SIZE  ?= 8G
SERVE_SOCK  ?= busesnap.sock
serve:
	tests/deps.sh --build
	$(MAKE) all
	./busesnap serve $(SERVE_IMAGE) --size $(SERVE_SIZE) --socket $(SERVE_SOCK)

install: all
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(SBINDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 \
	    $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(BASHCOMPDIR)
	install -m 644 libbuse.a $(DESTDIR)$(LIBDIR)/
	install -m 755 libbuse.so $(DESTDIR)$(LIBDIR)/libbuse.so.$(SOVERSION)
	ln -sf libbuse.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libbuse.so
	install -m 644 include/buse.h $(DESTDIR)$(INCDIR)/
	install -m 644 buse.pc $(DESTDIR)$(PKGCONFIGDIR)/
	install -m 755 busexmp bsnap $(DESTDIR)$(BINDIR)/
	install -m 755 busesnap $(DESTDIR)$(SBINDIR)/
	for m in doc/*.1; do [ -f $$m ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man1/; done; true
	for m in doc/*.3; do [ -f $$m ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man3/; done; true
	for m in doc/*.8; do [ -f $$m ] && install -m 644 $$m $(DESTDIR)$(MANDIR)/man8/; done; true
	install -m 644 completion/bsnap completion/busesnap $(DESTDIR)$(BASHCOMPDIR)/
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	for u in systemd/*@.service systemd/*@.socket; do \
	    sed 's|@SBINDIR@|$(SBINDIR)|g' $$u >$(DESTDIR)$(SYSTEMDUNITDIR)/$${u#systemd/} && \
	    chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/$${u#systemd/} || exit 1; done

FORMAT_FILES = $(wildcard include/*.h src/*/*.c src/*/*.h tools/*.c tests/unit/*.c)
format:
	clang-format -i $(FORMAT_FILES)
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

clean:
	rm -f src/*/*.o tools/*.o libbuse.a libbuse.so libstore.a $(PROGRAMS) $(UNIT_BIN) buse.pc \
	    $(RELIABILITY_TOOLS)

# Test tiers add their own build rules (tests/*/*.mk): each defines what it
# builds and adds it to RELIABILITY_TOOLS.
RELIABILITY_TOOLS :=
-include $(sort $(wildcard tests/*/*.mk))
reliability-tools: $(RELIABILITY_TOOLS)

.PHONY: all deps check check-kernel check-reliability reliability-tools bench serve install format format-check clean

# The store-API benchmark (issue 17, M0): make bench/store-api, then see its
# usage line; bench/run.sh runs it.
bench/store-api: bench/store-api.c libstore.a
	$(CC) $(CFLAGS) -Isrc -o $@ $^ $(LDFLAGS) $(LIBS_STORE)
