#!/bin/bash
# A snapshot taken while fio writes at queue depth 16 is internally
# consistent (the store's check passes, online and offline) and frozen (its
# checksum does not change while the volume keeps being written, nor
# across a restart); the volume itself verifies with fio's crc32c.
. "$(dirname "$0")/functions.sh"
requires fio nbdcopy
bsnap() { "$top/bsnap" "$@"; }
sum() { nbdcopy "$(uri_of "$1")" - | sha256sum | cut -d' ' -f1; }

start_busesnap 128M
fio_args=(--name=w --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k
          --iodepth=16 --size=128M --refill_buffers --norandommap
          --randrepeat=0 --output="$tmp/fio.log")
fio "${fio_args[@]}" --time_based --runtime=8 &
fio_pid=$!
on_exit "kill $fio_pid"
# Wait until fio has written something, then snapshot under load.
for ((i = 0; i < 500; i++)); do
    [ "$(bsnap list --json | jq '.[0].written')" -gt 4194304 ] && break
    sleep 0.02
done
bsnap create mid >/dev/null || fail "snapshot under load failed"
a=$(sum mid)
bsnap check >/dev/null || fail "online check under load found problems"
wait $fio_pid || fail "fio failed: $(tail -5 "$tmp/fio.log")"
b=$(sum mid)
assert_eq "snapshot checksum after more writes" "$a" "$b"
[ "$(sum "")" != "$a" ] || fail "the volume did not change after the snapshot"
# The volume itself: a verifying pass at QD16.
fio --name=v --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=16 \
    --size=32M --verify=crc32c --verify_fatal=1 --refill_buffers --verify_state_save=0 \
    --output="$tmp/fio-verify.log" || fail "fio verify failed: $(grep -i -m2 verify "$tmp/fio-verify.log")"
bsnap check >/dev/null || fail "online check found problems"
stop_server TERM || fail "server exit $?"
"$top/busesnap" check "$image" >/dev/null || fail "offline check found problems"
start_busesnap
assert_eq "snapshot checksum after restart" "$a" "$(sum mid)"
exit 0
