# tests/reliability/failmalloc.mk: the LD_PRELOAD shims of the allocation
# failure and valgrind tests (tests/reliability/test-malloc-failure.sh,
# test-valgrind.sh).  Built by `make reliability-tools`; not linked into
# anything installed.
tests/reliability/failmalloc.so: tests/reliability/failmalloc.c
	$(CC) -O2 -g -fPIC -shared -Wall -Wextra -Werror -o $@ $< -pthread
tests/reliability/lmdb-mapsize.so: tests/reliability/lmdb-mapsize.c
	$(CC) -O2 -g -fPIC -shared -Wall -Wextra -Werror -o $@ $< -ldl
RELIABILITY_TOOLS += tests/reliability/failmalloc.so tests/reliability/lmdb-mapsize.so
