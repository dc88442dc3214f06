# tests/reliability/powercut.mk: the LD_PRELOAD shim of the power-loss test
# (tests/reliability/test-power-loss.sh): it logs every write busesnap makes
# to its image files so that crashload.py can take back the unsynced ones
# after SIGKILL.  Built by `make reliability-tools`; never installed.
tests/reliability/powercut.so: tests/reliability/powercut.c
	$(CC) -O2 -g -fPIC -shared -Wall -Wextra -Werror -o $@ $< -pthread -ldl
RELIABILITY_TOOLS += tests/reliability/powercut.so
