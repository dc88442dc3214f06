# tests/fuzz/fuzz.mk: build rules of the libFuzzer targets (issue 7 item 4),
# included by the Makefile.  Each target compiles the project sources it
# fuzzes with clang and -fsanitize=fuzzer,address,undefined (never the
# gcc-built objects, which carry no coverage), so the whole path from the
# socket to the callback or the store is instrumented.  -Werror is left
# out here only: a clang-only warning in code under rewrite must not stop
# the reliability tier (the gcc build keeps -Werror for every file).

FUZZ_CC     ?= clang
FUZZ_CFLAGS := -g -O1 -fno-omit-frame-pointer \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
               -std=gnu11 -pthread -D_GNU_SOURCE -Iinclude -Isrc \
               $(filter-out -Werror,$(WARN)) \
               $(shell pkg-config --cflags libnl-genl-3.0 2>/dev/null || echo -I/usr/include/libnl3)

FUZZ_NBD_SRC := tests/fuzz/fuzz-nbd.c $(BUSE_SRC)
FUZZ_CONTROL_SRC := tests/fuzz/fuzz-control.c src/server/control-ops.c src/server/attrs.c \
                    src/server/exports.c $(STORE_SRC) $(BUSE_SRC) \
                    src/common/common.c

tests/fuzz/fuzz-nbd: $(FUZZ_NBD_SRC) tests/fuzz/fuzz-pump.h $(HEADERS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc/buse -o $@ $(FUZZ_NBD_SRC) \
	    $(LIBS_BUSE)

tests/fuzz/fuzz-control: $(FUZZ_CONTROL_SRC) src/server/control.c \
                         tests/fuzz/fuzz-pump.h $(HEADERS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc/server -o $@ $(FUZZ_CONTROL_SRC) \
	    $(LIBS_STORE) $(LIBS_BUSE) -ljansson

RELIABILITY_TOOLS += tests/fuzz/fuzz-nbd tests/fuzz/fuzz-control
