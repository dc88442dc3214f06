#!/bin/bash
# test-busexmp-systemd: systemd socket activation.  nbdinfo -- CMD starts
# busexmp with LISTEN_PID/LISTEN_FDS set and a listening socket on fd 3
# (as systemd does); busexmp must take it and serve it.  Also through
# libnbd's connect_systemd_socket_activation with a read/write round trip.
. "$(dirname "$0")/functions.sh"
requires nbdinfo nbdsh jq
size=$(nbdinfo --size -- [ "$top/busexmp" 48M ]) || fail "nbdinfo -- busexmp failed"
assert_eq "size over socket activation" $((48 << 20)) "$size"
out=$(nbdsh -c '
h.connect_systemd_socket_activation(["'"$top/busexmp"'", "1M"])
h.pwrite(b"abc" * 1000, 100)
assert h.pread(3000, 100) == b"abc" * 1000
print(h.get_size())
') || fail "nbdsh socket activation round trip failed"
assert_eq "nbdsh round trip" 1048576 "$out"
