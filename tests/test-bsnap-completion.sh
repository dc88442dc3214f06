#!/bin/bash
# test-bsnap-completion: the bash completion of bsnap and busesnap
# (completion/, installed by make install) completes commands and options,
# and asks a running server (bsnap list --json, through the --control on
# the command line) for names: snapshots where a snapshot is wanted,
# volumes where a volume is, both where either is.
. "$(dirname "$0")/functions.sh"
requires nbdsh
start_busesnap 64M
"$top/bsnap" snapshot base >/dev/null
"$top/bsnap" clone base vm1 >/dev/null
"$top/bsnap" snapshot s2 --volume vm1 >/dev/null
unset BSNAP_CONTROL # the control socket must come from the command line

# complete PROG WORD...: what the completion offers for the last WORD
# (sorted, one line, space separated).
complete_words() {
    PATH="$top:$PATH" bash -c '
        . "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        "$(complete -p "$1" | sed "s/.*-F \([^ ]*\) .*/\1/")"
        printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " " | sed "s/ $//"' \
        _ "$top/completion/$1" "$@"
}
c="--control $ctl"
assert_eq "commands" "check clone create" "$(complete_words bsnap c)"
assert_eq "snapshot verb" "snapshot" "$(complete_words bsnap sn)"
assert_eq "rollback takes snapshots" "base s2" "$(complete_words bsnap $c rollback "")"
assert_eq "clone takes a snapshot first" "base s2" "$(complete_words bsnap $c clone "")"
assert_eq "clone's new name is free" "" "$(complete_words bsnap $c clone base "")"
assert_eq "default takes volumes" "default vm1" "$(complete_words bsnap $c default "")"
assert_eq "delete takes both" "base default s2 vm1" "$(complete_words bsnap $c delete "")"
assert_eq "--volume takes volumes" "vm1" "$(complete_words bsnap $c snapshot --volume v)"
assert_eq "--control=PATH too" "base s2" "$(complete_words bsnap --control="$ctl" rollback "")"
assert_eq "list options" "--bytes" "$(complete_words bsnap list --b)"
assert_eq "no server, no names" "" "$(complete_words bsnap --control "$tmp/none" rollback "")"
assert_eq "busesnap commands" "serve" "$(complete_words busesnap se)"
assert_eq "busesnap serve --single" "--single --size --socket" "$(complete_words busesnap serve img --s)"
assert_eq "busesnap --tls values" "off on" "$(complete_words busesnap serve img --tls o)"
exit 0
