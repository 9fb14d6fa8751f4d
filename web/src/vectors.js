// The shared vectors (tests/vectors/web_validation.json: the Python CLI's own answers) run through this page's
// modules. Used in Chromium by tests/integration/test_web.py and in Node.js by web/test/vectors.test.mjs.
import { parse as parseToml } from "smol-toml";
import * as records from "./records.js";
import { runPipeline } from "./pipeline.js";
import { parsePolicy, pseudonym, Router, UsageError } from "./route.js";
import { decodeWindows1252, detectFormat, NotResultsError, readCsv, Validator } from "./validate.js";

function equal(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && equal(a[k], b[k]));
}

/** The first place two JSON-like values differ, as a path. */
export function firstDifference(a, b, where = "") {
  if (equal(a, b)) return null;
  if (a && b && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const d = firstDifference(a[k], b[k], `${where}${Array.isArray(a) ? `[${k}]` : `.${k}`}`);
      if (d) return d;
    }
  }
  return `${where || "(value)"}: got ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`;
}

function bytesOf(c) {
  if (c.csv !== undefined) return new TextEncoder().encode(c.csv);
  return Uint8Array.from(atob(c.csv_base64), (ch) => ch.charCodeAt(0));
}

const distinct = (rows) => new Set(rows.map((r) => r.record)).size;

function constants() {
  const r = records;
  return {
    FIELDS: [...r.FIELDS],
    DERIVED: [...r.DERIVED],
    ALL_OUTPUT_FIELDS: [...r.ALL_OUTPUT_FIELDS],
    DIRECT_IDENTIFIERS: [...r.DIRECT_IDENTIFIERS].sort(),
    REQUIRED: [...r.REQUIRED].sort(),
    MAX_LENGTH: { ...r.MAX_LENGTH },
    RAW_MAX: r.RAW_MAX,
    Result: { ...r.Result },
    SNOMED_RESULTS: { ...r.SNOMED_RESULTS },
    DEFAULT_LOINC: [...r.DEFAULT_LOINC],
    Reason: { ...r.Reason },
    REVIEW_REASONS: [...r.REVIEW_REASONS].sort(),
    OPTIONAL: [...r.OPTIONAL],
    FORMULA_FIELDS: [...r.FORMULA_FIELDS],
    INVISIBLE_RANGES: r.INVISIBLE_RANGES.map((range) => [...range]),
  };
}

/** A file refused whole, as the vectors give it: the message, the code, and what the file is when it is certain. */
function refusal(e) {
  if (!(e instanceof NotResultsError)) throw e;
  return { error: e.message, code: e.code, ...(e.kind ? { kind: e.kind } : {}) };
}

/** Read and validate one file as pipeline.run does: its kind and format first, then block by block. */
function validation(vectors, c, ref) {
  const bytes = bytesOf(c);
  let read;
  try {
    const format = detectFormat(bytes, vectors.file_name);
    if (format !== "csv") return { format };
    read = readCsv(bytes, { name: vectors.file_name, blockBytes: c.block_bytes });
  } catch (e) {
    return refusal(e);
  }
  const validator = new Validator({ today: c.today, loinc: vectors.loinc, ...ref });
  const out = {
    read: read.read, ignored: read.ignored, missing: read.missing, rejected: read.rejected, rejections: [], accepted: [],
  };
  let rejected = 0;
  for (const batch of read.batches) {
    const result = validator.validate(batch.records, { padded: batch.padded });
    out.rejections.push(...result.rejections);
    out.accepted.push(...result.accepted);
    rejected += distinct(batch.rejected) + result.rejectedRecords;
  }
  out.summary = { read: read.read, accepted: out.accepted.length, rejected };
  return out;
}

/** Validate, route and minimise one file as `labrelay send` does (the lab page's own pipeline). */
async function routing(vectors, c, ref) {
  const policy = parsePolicy(parseToml(c.policy));
  let router;
  try {
    router = new Router(policy, new Set(Object.values(ref.departmentRegions)), c.enrolled, {
      restrict: c.restrict,
      pseudonymKey: c.pseudonym_key,
    });
  } catch (e) {
    if (e instanceof UsageError) return { error: e.message };
    throw e;
  }
  const run = await runPipeline(bytesOf(c), {
    policy, router, ...ref, today: c.today, name: vectors.file_name, blockBytes: c.block_bytes,
  });
  return {
    outputs: run.outputs, missing: run.absent, rejections: run.rejectionsCsv, review: run.review, summary: run.summary,
  };
}

function policyOf(text) {
  let policy;
  try {
    policy = parsePolicy(parseToml(text));
  } catch (e) {
    if (e instanceof UsageError) return { error: e.message };
    throw e;
  }
  return {
    version: policy.version,
    loinc: [...policy.loinc].sort(),
    description: policy.description,
    require_pq: policy.requirePq,
    recipients: policy.recipients.map((r) => ({
      name: r.name, select: r.select, fields: [...r.fields], format: r.format, by_region: r.byRegion,
      pseudonymise: r.pseudonymise, unparsed: r.unparsed,
    })),
  };
}

/** Every vector; `ref` is {communes, departmentRegions}. Returns {count, failures: ["kind: name: difference"]}. */
export async function runAll(vectors, ref) {
  const refdata = { communes: ref.communes, departmentRegions: ref.departmentRegions ?? ref.department_regions };
  const failures = [];
  let count = 0;
  const check = (kind, name, got, expected) => {
    count++;
    const d = firstDifference(got, expected);
    if (d !== null) failures.push(`${kind}: ${name}: ${d}`);
  };
  check("records", "constants match labrelay.domain.records", constants(), vectors.records);
  const high = Uint8Array.from({ length: 128 }, (_, i) => 0x80 + i);
  check("records", "Windows-1252 decoded as the CLI decodes it", decodeWindows1252(high), vectors.windows_1252);
  for (const c of vectors.validation) check("validation", c.name, validation(vectors, c, refdata), c.expected);
  for (const c of vectors.routing) check("routing", c.name, await routing(vectors, c, refdata), c.expected);
  for (const p of vectors.pseudonyms) {
    check("pseudonym", `${p.nom} / ${p.prenom}`, await pseudonym(vectors.pseudonym_key, p.nom, p.prenom, p.date_naissance), p.pseudonym);
  }
  for (const p of vectors.policies) check("policy", p.name, policyOf(p.toml), p.expected);
  return { count, failures };
}
