#!/usr/bin/env bash
# Send every lab-results export the lab's information system (LIS) left in $EXPORTS, once each. Run it from cron
# or a systemd timer as often as you like (every 10 minutes, say): labrelay sends a file at most once, finishes
# what an interrupted run left, and two runs never overlap (the second waits for the first's lock).
#
#   LABRELAY_AS=/srv/labrelay/parties/lab-paris-01 LABRELAY_SERVER=https://relay.example.org \
#   EXPORTS=/srv/lis/exports labrelay-send-exports.sh
#
# Each file ends in one place: $EXPORTS/sent/ (sent, or sent before), $EXPORTS/refused/ (not lab results, every
# record rejected, or a threshold crossed: a person must look; the reason is in $EXPORTS/labrelay.jsonl), or it
# stays where it is to be tried again (relay unreachable, a network cut: nothing to do but wait).
# Exit: 0 everything sent; 1 something waits for the next run; 2 a file was refused, or this script is set up
# wrong (LABRELAY not found: cron's PATH is /usr/bin:/bin, so give LABRELAY=/opt/labrelay/bin/labrelay); 3 a
# security refusal (alert).
set -u
umask 077                               # the log names files and counts: the user's alone
: "${LABRELAY_AS:?the lab party directory}" "${LABRELAY_SERVER:?the relay URL}" "${EXPORTS:?the export folder}"
LABRELAY="${LABRELAY:-labrelay}"
if ! command -v "${LABRELAY%% *}" >/dev/null; then   # its first word: LABRELAY may be "python3 -m labrelay"
    echo "labrelay-send-exports: $LABRELAY not found (PATH=$PATH): set LABRELAY to its full path" >&2
    exit 2
fi
LOG="${LOG:-$EXPORTS/labrelay.jsonl}"   # one JSON document per command: what was sent, held, rejected, and why
mkdir -p "$EXPORTS/sent" "$EXPORTS/refused"
worst=0
note() { [ "$1" -gt "$worst" ] && worst=$1; }
error_code() { python3 -c 'import json, sys; print((json.loads(sys.argv[1]).get("error") or {}).get("code", ""))' "$1"; }

# Uploads an earlier run could not finish (the relay restarted mid-upload): finished first.
doc=$($LABRELAY resume --as "$LABRELAY_AS" --server "$LABRELAY_SERVER" --json --wait 10m)
note $?
printf '%s\n' "$doc" >>"$LOG"

for file in "$EXPORTS"/*.[cC][sS][vV]; do   # results.csv or RESULTS.CSV; a LIS writing results.csv.part and
                                            # renaming it when complete is never taken early
    [ -e "$file" ] || continue
    doc=$($LABRELAY send "$file" --as "$LABRELAY_AS" --server "$LABRELAY_SERVER" --json --wait 10m)
    code=$?
    printf '%s\n' "$doc" >>"$LOG"
    case $code in
        0) mv -- "$file" "$EXPORTS/sent/" ;;
        1) if [ "$(error_code "$doc")" = "nothing-sent" ]; then   # the data, not the network: a person must look
               mv -- "$file" "$EXPORTS/refused/"; note 2
           else
               note 1                                               # relay unreachable, frozen, busy: next run
           fi ;;
        2) mv -- "$file" "$EXPORTS/refused/"; note 2 ;;             # not a lab-results file (what it is: in the log)
        130|143) note 1; break ;;                                   # interrupted or stopped: the next run finishes
        *) note 3 ;;                                                # refused by a security check: alert someone
    esac
done
exit "$worst"
