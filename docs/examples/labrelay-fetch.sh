#!/usr/bin/env bash
# Fetch what waits for a recipient into $INBOX, then hand each new file to a loader. Run it from cron or a systemd
# timer (every few minutes): a run that finds another still fetching waits for it, a payload that fails a check is
# refused once (and never blocks the others), a second copy of a file is declined.
#
#   LABRELAY_AS=/srv/labrelay/parties/cnam LABRELAY_SERVER=https://relay.example.org INBOX=/srv/cnam/inbox \
#   LOAD='psql -d tracing -c "\copy cnam_results FROM $FILE WITH (FORMAT csv, HEADER MATCH)"' labrelay-fetch.sh
#
# Exit: 0 everything fetched; 1 something waits for the next run (relay unreachable…); 2 this script is set up
# wrong (LABRELAY not found: cron's PATH is /usr/bin:/bin, so give LABRELAY=/opt/labrelay/bin/labrelay); 3 a
# payload was refused (its sender is told; look at the log); 4 a loader failed (the file stays in $INBOX, named in
# the log).
set -u
: "${LABRELAY_AS:?the recipient party directory}" "${LABRELAY_SERVER:?the relay URL}" "${INBOX:?the inbox folder}"
LABRELAY="${LABRELAY:-labrelay}"
if ! command -v "${LABRELAY%% *}" >/dev/null; then   # its first word: LABRELAY may be "python3 -m labrelay"
    echo "labrelay-fetch: $LABRELAY not found (PATH=$PATH): set LABRELAY to its full path" >&2
    exit 2
fi
LOG="${LOG:-$INBOX/labrelay.jsonl}"     # one JSON document per run: files written, duplicates, refusals
doc=$($LABRELAY fetch --as "$LABRELAY_AS" --server "$LABRELAY_SERVER" --out "$INBOX" --json --wait 10m \
      ${FORMAT:+--format "$FORMAT"})
code=$?
printf '%s\n' "$doc" >>"$LOG"
if [ -n "${LOAD:-}" ]; then
    files=$(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1]).get("files", [])))' "$doc")
    while IFS= read -r FILE; do
        [ -n "$FILE" ] || continue
        export FILE
        if ! sh -c "$LOAD"; then echo "labrelay-fetch: loading $FILE failed; it stays in $INBOX" >&2; code=4; fi
    done <<<"$files"
fi
exit "$code"
