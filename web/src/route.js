// Routing and minimisation under the signed policy, in the browser, as `labrelay send` does them.
//
// Mirrors src/labrelay/domain/policy.py (parse_policy: the checks on a policy, given its parsed TOML),
// src/labrelay/batch/route.py (destinations, Router, the keyed pseudonyms), src/labrelay/crypto/pseudonym.py
// (HMAC-SHA256 under the key's 64 hex characters as ASCII bytes) and the CSV form of
// src/labrelay/batch/outputs.py (RecordSink: a header line, then the rows as polars write_csv writes them).

import { isPqRecipient } from "./directory.js";
import { ALL_OUTPUT_FIELDS, DIRECT_IDENTIFIERS, FIELDS, Reason, Result, normaliseTrait } from "./records.js";

/** The caller asked for something malformed or impossible (labrelay.errors.UsageError). `reason` and `names`
 * say which refusal it is, for the page's own words (the message is the CLI's). */
export class UsageError extends Error {
  constructor(message, hint = null, { reason = null, names = [] } = {}) {
    super(message);
    this.name = "UsageError";
    this.code = "usage";
    this.hint = hint;
    this.reason = reason;
    this.names = names;
  }
}

/** A policy that cannot be used as written (labrelay.domain.policy.PolicyError). */
export class PolicyError extends UsageError {
  constructor(message, hint = null) {
    super(message, hint);
    this.name = "PolicyError";
  }
}

export const SELECTIONS = ["all", "positive"];
export const FORMATS = ["csv", "fhir-ndjson"];
export const REGION_SLOT = "{region}";
export const ROW_ID = "_lid"; // route.ROW_ID: a routed record's row id, kept when present
const VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const LOINC = /^[0-9]{1,7}-[0-9]$/;
const PARTY = /^[a-z][a-z0-9-]{1,62}[a-z0-9]$/; // names.check_party_name
const KEY = /^[0-9a-f]{64}$/; // pseudonym._KEY
const RULE_KEYS = new Set(["name", "select", "fields", "format", "by_region", "pseudonymise", "unparsed"]);
const POLICY_KEYS = new Set(["version", "description", "loinc", "recipients", "require_pq"]);

// ------------------------------------------------------------------ Python's sorted() and repr(), for messages

/** Python's order for strings: by code point (JavaScript's default sort compares UTF-16 units). */
function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

const sorted = (items) => [...items].sort(byCodePoint);

const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** repr() of a str, list or tuple of str, as Python writes it (close enough for error messages). */
function pyRepr(value, tuple = false) {
  if (Array.isArray(value)) {
    const items = value.map((v) => pyRepr(v));
    if (tuple) return items.length === 1 ? `(${items[0]},)` : `(${items.join(", ")})`;
    return `[${items.join(", ")}]`;
  }
  if (typeof value !== "string") return String(value);
  const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of value) {
    const cp = ch.codePointAt(0);
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch !== " " && NOT_PRINTABLE.test(ch)) {
      if (cp < 0x100) out += "\\x" + cp.toString(16).padStart(2, "0");
      else if (cp < 0x10000) out += "\\u" + cp.toString(16).padStart(4, "0");
      else out += "\\U" + cp.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

// ------------------------------------------------------------------ the policy: domain/policy.py

/** policy.RecipientRule: one rule of the policy. */
export class RecipientRule {
  constructor({ name, select, fields, format = "csv", byRegion = false, pseudonymise = false, unparsed = false }) {
    this.name = name; // a party name, or a template containing "{region}"
    this.select = select;
    this.fields = Object.freeze([...fields]);
    this.format = format;
    this.byRegion = byRegion;
    this.pseudonymise = pseudonymise;
    this.unparsed = unparsed; // may receive documents sent unparsed (send --as-is), which carry every field
    Object.freeze(this);
  }

  /** [party name, region] for each party this rule addresses (RecipientRule.names_for). */
  namesFor(regions) {
    if (this.byRegion) return sorted(regions).map((region) => [this.name.replaceAll(REGION_SLOT, region), region]);
    return [[this.name, null]];
  }
}

function isTable(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function strings(value, what) {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
    throw new PolicyError(`policy: ${what} must be a list of strings`);
  }
  return value;
}

/** policy._rule: one recipient table, checked key by key in the Python order. */
function rule(raw, index) {
  const where = `policy: recipient #${index + 1}`;
  const unknown = Object.keys(raw).filter((k) => !RULE_KEYS.has(k));
  if (unknown.length) throw new PolicyError(`${where}: unknown keys ${pyRepr(sorted(unknown))}`);
  const name = raw.name;
  if (typeof name !== "string") throw new PolicyError(`${where}: a name is required`);
  const byRegion = "by_region" in raw ? raw.by_region : false;
  const pseudonymise = "pseudonymise" in raw ? raw.pseudonymise : false;
  const unparsed = "unparsed" in raw ? raw.unparsed : false;
  if (![byRegion, pseudonymise, unparsed].every((flag) => typeof flag === "boolean")) {
    throw new PolicyError(`${where}: by_region, pseudonymise and unparsed are true or false`);
  }
  if (byRegion !== name.includes(REGION_SLOT) || name.split(REGION_SLOT).length > 2) {
    throw new PolicyError(`${where}: a by_region recipient's name contains ${REGION_SLOT} once, and only such a name`);
  }
  const party = name.replaceAll(REGION_SLOT, "00");
  if (!PARTY.test(party)) {
    throw new UsageError(
      `invalid party name ${pyRepr(party)}`,
      "use 3-64 lower-case letters, digits or hyphens, starting with a letter (e.g. ars-11)",
    );
  }
  const select = "select" in raw ? raw.select : "all";
  if (!SELECTIONS.includes(select)) throw new PolicyError(`${where}: select must be one of ${pyRepr(SELECTIONS, true)}`);
  const format = "format" in raw ? raw.format : "csv";
  if (!FORMATS.includes(format)) throw new PolicyError(`${where}: format must be one of ${pyRepr(FORMATS, true)}`);
  const fields = strings(raw.fields, `${where} fields`);
  if (!fields.length) throw new PolicyError(`${where} (${name}) receives no field`);
  const unknownFields = fields.filter((f) => !ALL_OUTPUT_FIELDS.includes(f));
  if (unknownFields.length) throw new PolicyError(`${where}: unknown fields ${pyRepr(unknownFields)}`);
  if (new Set(fields).size !== fields.length) throw new PolicyError(`${where}: a field is listed twice`);
  if (pseudonymise) {
    const leaked = sorted(new Set(fields.filter((f) => DIRECT_IDENTIFIERS.has(f))));
    if (leaked.length) throw new PolicyError(`${where} (${name}) is pseudonymised but would receive ${pyRepr(leaked)}`);
    if (!fields.includes("pseudonyme")) {
      throw new PolicyError(`${where} (${name}) is pseudonymised: it must receive the pseudonyme`);
    }
    if (unparsed) {
      // an unparsed document carries every field it holds: it cannot be pseudonymised
      throw new PolicyError(`${where} (${name}) is pseudonymised: it cannot receive unparsed documents`);
    }
  } else if (fields.includes("pseudonyme")) {
    throw new PolicyError(`${where} (${name}) receives a pseudonyme only when pseudonymise = true`);
  }
  return new RecipientRule({ name, select, fields, format, byRegion, pseudonymise, unparsed });
}

/**
 * Check a routing policy, given as its parsed TOML (an object, e.g. from smol-toml's parse), as
 * policy.parse_policy does: refuses anything ambiguous, and policies that give nothing or everything.
 * Returns {version, loinc: Set, recipients: RecipientRule[], description}.
 */
export function parsePolicy(raw) {
  if (!isTable(raw)) throw new PolicyError("policy is not valid TOML: not a table");
  const unknown = Object.keys(raw).filter((k) => !POLICY_KEYS.has(k));
  if (unknown.length) throw new PolicyError(`policy: unknown keys ${pyRepr(sorted(unknown))}`);
  const version = raw.version;
  if (typeof version !== "string" || !VERSION.test(version)) {
    throw new PolicyError("policy: a version (letters, digits, . _ -, up to 64) is required");
  }
  const loinc = strings(raw.loinc, "loinc");
  if (!loinc.length || !loinc.every((code) => LOINC.test(code))) {
    throw new PolicyError("policy: loinc must list the accepted LOINC codes (e.g. 94500-6)");
  }
  const recipientsRaw = raw.recipients;
  if (!Array.isArray(recipientsRaw) || !recipientsRaw.length) {
    throw new PolicyError("policy gives nothing: it has no recipient");
  }
  const rules = recipientsRaw.map((r, i) => {
    if (!isTable(r)) throw new PolicyError(`policy: recipient #${i + 1} is not a table`);
    return rule(r, i);
  });
  const names = rules.map((r) => r.name);
  if (new Set(names).size !== names.length) throw new PolicyError("policy: a recipient is listed twice");
  if (rules.every((r) => r.select === "all" && FIELDS.every((f) => r.fields.includes(f)))) {
    throw new PolicyError(
      "policy gives everything to everyone: minimise at least one recipient's records or fields",
    );
  }
  const description = "description" in raw ? raw.description : "";
  if (typeof description !== "string") throw new PolicyError("policy: description must be text");
  const requirePq = "require_pq" in raw ? raw.require_pq : false;
  if (typeof requirePq !== "boolean") throw new PolicyError("policy: require_pq must be true or false");
  return Object.freeze({
    version,
    loinc: new Set(loinc),
    recipients: Object.freeze(rules),
    description,
    requirePq, // every recipient's age key must be hybrid post-quantum (age1pq1…): see classicRecipients
  });
}

/**
 * The parties among `entries` (verified directory entries, {name, age_recipient}) whose age key this policy refuses
 * (policy.Policy.classic_refusal): under require_pq, those with a classic X25519 key (not `age1pq1…`), sorted;
 * none otherwise.
 */
export function classicRecipients(policy, entries) {
  if (!policy.requirePq) return [];
  return sorted(entries.filter((e) => !isPqRecipient(e.age_recipient)).map((e) => e.name));
}

// ------------------------------------------------------------------ pseudonyms: route.with_pseudonyms

const keys = new Map(); // key hex → Promise<CryptoKey>

function hmacKey(keyHex) {
  if (typeof keyHex !== "string" || !KEY.test(keyHex)) throw new UsageError("malformed pseudonym key");
  let key = keys.get(keyHex);
  if (key === undefined) {
    const raw = new TextEncoder().encode(keyHex); // the 64 hex characters as ASCII bytes, not the 32 bytes
    key = globalThis.crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    keys.set(keyHex, key);
  }
  return key;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

async function hmacHex(key, message) {
  const mac = new Uint8Array(await globalThis.crypto.subtle.sign("HMAC", await key, new TextEncoder().encode(message)));
  let out = "";
  for (const b of mac) out += HEX[b];
  return out;
}

/** What the pseudonym is computed from (route.pseudonym_input): NOM|PRENOM|YYYY-MM-DD after normalisation. */
export function pseudonymInput(nom, prenom, dateNaissance) {
  return `${normaliseTrait(nom)}|${normaliseTrait(prenom)}|${dateNaissance}`;
}

/**
 * The keyed pseudonym of a person (HMAC-SHA256 hex of pseudonymInput under the key's ASCII bytes), as the CLI
 * computes it for pseudonymised recipients. dateNaissance is 'YYYY-MM-DD' (the validated, normalised value).
 */
export async function pseudonym(keyHex, nom, prenom, dateNaissance) {
  return hmacHex(hmacKey(keyHex), pseudonymInput(nom, prenom, dateNaissance));
}

/** records, each with its "pseudonyme" (route.with_pseudonyms). One HMAC per distinct input. */
async function withPseudonyms(records, keyHex) {
  const key = hmacKey(keyHex);
  const inputs = records.map((r) => pseudonymInput(r.nom, r.prenom, r.date_naissance));
  const distinct = [...new Set(inputs)];
  const macs = new Map();
  for (let i = 0; i < distinct.length; i += 4096) {
    const chunk = distinct.slice(i, i + 4096);
    const out = await Promise.all(chunk.map((m) => hmacHex(key, m)));
    chunk.forEach((m, k) => macs.set(m, out[k]));
  }
  return records.map((r, i) => ({ ...r, pseudonyme: macs.get(inputs[i]) }));
}

// ------------------------------------------------------------------ routing: route.destinations and Router

/** Every party the policy addresses, regional rules expanded over regions: [{name, rule, region}]. */
export function destinations(policy, regions) {
  const all = sorted(new Set(regions));
  return policy.recipients.flatMap((r) => r.namesFor(all).map(([name, region]) => ({ name, rule: r, region })));
}

/** In a held row: the recipient whose share of the record is held ("" when no ARS covers the residence). */
export const HELD_RECIPIENT = "_recipient"; // route.HELD_RECIPIENT

export class Router {
  /**
   * policy: from parsePolicy; allRegions: every INSEE region code (the values of the department → region
   * table); enrolled: the names of the recipients in force in the directory. Options: restrict (the names of
   * `--to`), pseudonymKey (the lab's 64-hex-character key). Throws UsageError as route.Router does.
   * `missing` names the recipients this send addresses that are not enrolled: their shares are held.
   */
  constructor(policy, allRegions, enrolled, { restrict = null, pseudonymKey = null } = {}) {
    this.policy = policy;
    const every = destinations(policy, allRegions);
    const known = new Set(every.map((d) => d.name));
    const wantedNames = restrict == null ? null : new Set(restrict);
    if (wantedNames !== null) {
      const unknown = sorted([...wantedNames].filter((n) => !known.has(n)));
      if (unknown.length) {
        throw new UsageError(
          `${unknown.join(", ")}: not a recipient under policy ${policy.version}`,
          "labrelay send --as-is --to NAME sends a document without routing",
          { reason: "not-a-recipient", names: unknown },
        );
      }
    }
    const inForce = new Set(enrolled);
    const wanted = every.filter((d) => wantedNames === null || wantedNames.has(d.name));
    const missing = wanted.filter((d) => !inForce.has(d.name));
    const nationalMissing = sorted(missing.filter((d) => d.region === null).map((d) => d.name));
    if (nationalMissing.length) {
      throw new UsageError(
        `policy ${policy.version} sends to ${nationalMissing.join(", ")}, which is not enrolled`,
        "enrol it, or restrict the send with --to",
        { reason: "not-enrolled", names: nationalMissing },
      );
    }
    this.missingRegions = sorted(new Set(missing.filter((d) => d.region !== null).map((d) => d.region)));
    this.missing = sorted(missing.map((d) => d.name));
    this.destinations = wanted.filter((d) => inForce.has(d.name));
    // Regional rules this send addresses, and whether it addresses the policy whole (no --to): only then is a
    // residence no ARS covers a held regional share.
    this._regionalRules = policy.recipients.filter((r) => r.byRegion && wanted.some((d) => d.rule === r));
    this._whole = wantedNames === null;
    if (!this.destinations.length) {
      throw new UsageError("no enrolled recipient to send to under this policy", null, { reason: "no-recipient" });
    }
    if (this.destinations.some((d) => d.rule.pseudonymise) && !pseudonymKey) {
      throw new UsageError(
        "the policy pseudonymises records for some recipients, and this lab has no pseudonym key",
        "enrol the lab with the authority that holds the key (labrelay party enroll)",
        { reason: "no-pseudonym-key" },
      );
    }
    this._key = pseudonymKey;
  }

  /**
   * Router.route: {out: {recipient: records with only its fields}, held: one row per record and recipient whose
   * share cannot be delivered (its ARS not enrolled; or, in a send not restricted with --to, a residence no ARS
   * table covers), the record whole with _reason and _recipient}. Each record still goes to every enrolled
   * recipient the policy gives it. accepted are Validator.validate's accepted records.
   */
  async route(accepted) {
    if (this.destinations.some((d) => d.rule.pseudonymise) && this._key != null) {
      accepted = await withPseudonyms(accepted, this._key);
    }
    const positive = (r) => r.resultat === Result.POSITIVE;
    const positives = accepted.filter(positive);
    const byRegion = new Map();
    for (const r of accepted) {
      let part = byRegion.get(r._region);
      if (part === undefined) byRegion.set(r._region, (part = []));
      part.push(r);
    }
    const out = {};
    for (const dest of this.destinations) {
      let chosen = dest.rule.select === "positive" ? positives : accepted;
      if (dest.region !== null) {
        chosen = byRegion.get(dest.region) ?? [];
        if (dest.rule.select === "positive") chosen = chosen.filter(positive);
      }
      const keep = [...dest.rule.fields];
      if (chosen.some((r) => ROW_ID in r)) keep.push(ROW_ID);
      out[dest.name] = chosen.map((r) => Object.fromEntries(keep.map((f) => [f, r[f] ?? null])));
    }
    return { out, held: this._held(accepted, positives) };
  }

  /** Router._held: per regional rule, the shares of its missing recipients, then those no ARS covers. */
  _held(accepted, positives) {
    const missing = new Set(this.missingRegions);
    const held = [];
    for (const rule of this._regionalRules) {
      const addressed = rule.select === "all" ? accepted : positives;
      if (missing.size) {
        for (const r of addressed) {
          if (r._region === null || !missing.has(r._region)) continue;
          // the rule's name with its {region} (only one: parsePolicy refuses more) replaced
          const name = rule.name.replace(REGION_SLOT, () => r._region);
          held.push({ ...r, _reason: Reason.NO_RECIPIENT, [HELD_RECIPIENT]: name });
        }
      }
      if (this._whole) {
        for (const r of addressed) {
          if (r._region === null) held.push({ ...r, _reason: Reason.NO_REGION, [HELD_RECIPIENT]: "" });
        }
      }
    }
    return held;
  }
}

// ------------------------------------------------------------------ output: outputs.RecordSink (CSV)

const NEEDS_QUOTES = /[",\r\n]/;

function csvCell(value) {
  if (value === null || value === undefined) return ""; // polars writes null as nothing
  if (typeof value !== "string") return String(value); // age (an integer); dates are already YYYY-MM-DD
  if (value === "") return '""'; // ... and the empty string as "", to tell it from null
  return NEEDS_QUOTES.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/**
 * What RecordSink writes for a CSV recipient: the header line (its fields, as named), then one line per record
 * as polars write_csv writes it (quotes only where needed, "" for an empty string, \n line ends).
 */
export function toCsv(records, fields) {
  const lines = [fields.join(",") + "\n"];
  for (const r of records) lines.push(fields.map((f) => csvCell(r[f])).join(",") + "\n");
  return lines.join("");
}
