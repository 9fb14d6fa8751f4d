// read → validate → route, as `labrelay send` chains them (labrelay/batch/pipeline.py, client/routed.py): block by
// block, every record read ending up accepted (and routed), rejected with its reasons, or held for review, with
// the counts that must reconcile. Used by the lab page and by the shared vectors (vectors.js), so that what the
// tests check is what the page runs.
import { toCsv } from "./route.js";
import { readCsv, Validator } from "./validate.js";

const distinct = (rows) => new Set(rows.map((r) => r.record)).size;

export async function runPipeline(bytes, { policy, router, communes, departmentRegions, today, name, blockBytes }) {
  const read = readCsv(bytes, { name, blockBytes });
  const validator = new Validator({ today, loinc: policy.loinc, communes, departmentRegions });
  const sent = Object.fromEntries(router.destinations.map((d) => [d.name, []]));
  const review = [];
  const rejections = [...read.rejected];
  const summary = { read: read.read, accepted: 0, rejected: 0, held: 0, per_recipient: {} };
  for (const batch of read.batches) {
    const result = validator.validate(batch.records, { padded: batch.padded });
    rejections.push(...result.rejections);
    summary.rejected += distinct(batch.rejected) + result.rejectedRecords;
    const { out, review: held } = await router.route(result.accepted);
    for (const [dest, recs] of Object.entries(out)) {
      sent[dest].push(...recs);
      summary.per_recipient[dest] = (summary.per_recipient[dest] ?? 0) + recs.length;
    }
    review.push(...result.review, ...held);
    summary.held += result.review.length + held.length;
    summary.accepted += result.accepted.length - held.length;
  }
  summary.per_recipient = Object.fromEntries(Object.entries(summary.per_recipient).sort());
  const outputs = {};
  for (const d of router.destinations) {
    // RecordSink writes its header with the first batch: a file with no record line writes nothing at all
    outputs[d.name] = read.batches.length ? toCsv(sent[d.name], d.rule.fields) : "";
  }
  rejections.sort((a, b) => a.record - b.record);
  return { sent, outputs, review, rejections, summary, ignored: read.ignored };
}
