// read → validate → route, as `labrelay send` chains them (labrelay/batch/pipeline.py, client/routed.py): block by
// block, every record read ending up accepted (every share the policy addresses delivered), rejected with its
// reasons, or held (valid, and some recipient's share of it held because that recipient cannot take it; the
// enrolled recipients still get it), with the counts that must reconcile. Used by the lab page and by the shared
// vectors (vectors.js), so that what the tests check is what the page runs. The rejection report and the review
// file are the CLI's, byte for byte (RejectionReport, ReviewFile), so the page can offer them for download.
import { FIELDS, Result } from "./records.js";
import { HELD_RECIPIENT, toCsv } from "./route.js";
import { detectFormat, NotResultsError, readCsv, Validator } from "./validate.js";

/** pipeline.REVIEW_COLUMNS: the review file's columns. */
export const REVIEW_COLUMNS = Object.freeze(["record", "recipient", "reason", ...FIELDS]);

/** pipeline.NO_ARS as Summary.as_dict names it: the held regional shares of residences no ARS table covers. */
export const NO_ARS = "no-ars";

/** A value as Python's csv.writer writes it (QUOTE_MINIMAL, "\n" line ends). */
function pyCsvCell(value) {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** pipeline.RejectionReport: `record,field,reason`, one row per record and field, in the CLI's order. */
export function rejectionCsv(rows) {
  const lines = ["record,field,reason\n"];
  for (const r of rows) lines.push(`${pyCsvCell(r.record)},${pyCsvCell(r.field)},${pyCsvCell(r.reason)}\n`);
  return lines.join("");
}

/** pipeline.ReviewFile: one row per held share (record, recipient, reason, then the record whole). */
export function reviewCsv(held) {
  const rows = held.map((r) => ({ ...r, record: r._record, recipient: r[HELD_RECIPIENT], reason: r._reason }));
  return toCsv(rows, REVIEW_COLUMNS);
}

/**
 * pipeline.open_reader for the page: what the file is (a workbook, UTF-16 text, a PDF… is refused as such, with
 * its `kind`), then its header. HL7 v2 and FHIR results go through the CLI: refused here with their `format`.
 */
export function openResults(bytes, { name = "file", blockBytes } = {}) {
  const format = detectFormat(bytes, name);
  if (format !== "csv") {
    throw new NotResultsError(`${name} is ${format === "hl7" ? "HL7 v2" : "FHIR"}: the page reads CSV only`, { format });
  }
  return readCsv(bytes, { name, blockBytes });
}

/**
 * Run the pipeline over a file's bytes. Returns {sent: {recipient: records}, outputs: {recipient: CSV text},
 * held: the held rows, review: the review file's text, rejections: the report's rows, rejectionsCsv: its text,
 * summary: Summary.as_dict() (what `--summary` writes), ignored, missing (optional columns left out)
 * and absent (the recipients addressed but not enrolled)}.
 */
export async function runPipeline(bytes, { policy, router, communes, departmentRegions, today, name, blockBytes, read }) {
  read ??= openResults(bytes, { name, blockBytes }); // or what openResults already read from these bytes
  const validator = new Validator({ today, loinc: policy.loinc, communes, departmentRegions });
  const sent = Object.fromEntries(router.destinations.map((d) => [d.name, []]));
  const held = [];
  const rejections = [];
  const perRecipient = {};
  const heldFor = new Map();
  let accepted = 0;
  let rejected = 0;
  let heldRecords = 0;
  for (const batch of read.batches) {
    rejections.push(...batch.rejected); // the report writes a block's structural rejections first
    const result = validator.validate(batch.records, { padded: batch.padded });
    rejections.push(...result.rejections);
    rejected += new Set(batch.rejected.map((r) => r.record)).size + result.rejectedRecords;
    const { out, held: shares } = await router.route(result.accepted);
    for (const [dest, recs] of Object.entries(out)) {
      sent[dest].push(...recs);
      perRecipient[dest] = (perRecipient[dest] ?? 0) + recs.length;
    }
    // pipeline._count_held: records, not shares (under two regional rules a record no ARS covers is held twice)
    const seen = new Map();
    for (const share of shares) {
      const who = share[HELD_RECIPIENT];
      if (!seen.has(who)) seen.set(who, new Set());
      if (seen.get(who).has(share._record)) continue;
      seen.get(who).add(share._record);
      const count = heldFor.get(who) ?? { records: 0, positives: 0 };
      count.records += 1;
      if (share.resultat === Result.POSITIVE) count.positives += 1;
      heldFor.set(who, count);
    }
    held.push(...shares);
    const heldHere = new Set(shares.map((s) => s._record)).size;
    heldRecords += heldHere;
    accepted += result.accepted.length - heldHere;
  }
  const byName = (a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
  const summary = {
    input_format: "csv",
    read: read.read,
    accepted,
    rejected,
    held_for_review: heldRecords,
    reconciled: read.read === accepted + rejected + heldRecords,
    per_recipient: Object.fromEntries(Object.entries(perRecipient).sort(byName)),
    held_for: Object.fromEntries([...heldFor].sort(byName).map(([who, c]) => [who || NO_ARS, c])),
    ignored_columns: [...read.ignored],
    missing_columns: [...read.missing],
    policy_version: policy.version,
  };
  const outputs = {};
  for (const d of router.destinations) {
    // RecordSink writes its header with the first batch: a file with no record line writes nothing at all
    outputs[d.name] = read.batches.length ? toCsv(sent[d.name], d.rule.fields) : "";
  }
  return {
    sent,
    outputs,
    held,
    review: reviewCsv(held),
    rejections,
    rejectionsCsv: rejectionCsv(rejections),
    summary,
    ignored: read.ignored,
    missing: read.missing,
    absent: [...router.missing],
  };
}
