// The directory as this page sees it: only what verifies under the authority key the party pinned
// (labrelay/client/trust.py, domain/parties.py `resolve` and `from_payload`). A name with any record that does not
// verify, or that is malformed, is refused outright: a relay serving a forged entry is trying to get payloads
// sealed to its own key.
import { verifyEnvelope } from "./crypto.js";
import { instant } from "./dates.js";

export class TrustError extends Error {
  constructor(code, name, detail) {
    super(`${code}: ${name}${detail ? ` (${detail})` : ""}`);
    this.code = code;
    this.party = name;
  }
}

const ROLES = ["lab", "recipient", "admin", "dpo", "auditor"];
// An age recipient (domain/parties.py is_age_recipient): classic X25519 (`age1` + 32 bytes in Bech32), or hybrid
// ML-KEM-768 + X25519, post-quantum (`age1pq1` + 1,216 bytes: 1,959 characters). The shape only; the age library
// checks the checksum and the key when it seals to it.
const CLASSIC_RECIPIENT = /^age1[02-9ac-hj-np-z]{58}$/;
const PQ_RECIPIENT = /^age1pq1[02-9ac-hj-np-z]{1952}$/;

export function isAgeRecipient(text) {
  return typeof text === "string" && (CLASSIC_RECIPIENT.test(text) || PQ_RECIPIENT.test(text));
}

/** True for a hybrid post-quantum recipient (`age1pq1…`), false for a classic one or anything else. */
export function isPqRecipient(text) {
  return typeof text === "string" && PQ_RECIPIENT.test(text);
}

/** "post-quantum" or "classic" (domain/parties.py key_kind): what the console shows for a party's age key. */
export function keyKind(text) {
  return isPqRecipient(text) ? "post-quantum" : "classic";
}
const ED25519_B64 = /^[A-Za-z0-9_-]{43}$/;

function entryOf(p) {
  if (p.v !== 1 || typeof p.name !== "string" || !ROLES.includes(p.role)) throw new Error("malformed party entry");
  if (!isAgeRecipient(p.age_recipient) || !ED25519_B64.test(p.signing_key)) throw new Error("malformed keys");
  if (p.region !== null && p.region !== undefined && typeof p.region !== "string") throw new Error("malformed region");
  return { ...p, nb: instant(p.not_before), na: instant(p.not_after), issued: instant(p.issued_at) };
}

function revocationOf(p) {
  if (p.v !== 1 || typeof p.name !== "string") throw new Error("malformed revocation");
  return { ...p, at: instant(p.revoked_at) };
}

export async function trustedDirectory(doc, authority, now = Date.now()) {
  const entries = [];
  const revocations = [];
  const untrusted = new Set();
  const claimed = (env) => (env && env.payload && typeof env.payload.name === "string" ? env.payload.name : "?");
  for (const env of doc.entries || []) {
    try {
      entries.push(entryOf(await verifyEnvelope(env, "party-entry", authority)));
    } catch {
      untrusted.add(claimed(env));
    }
  }
  for (const env of doc.revocations || []) {
    try {
      revocations.push(revocationOf(await verifyEnvelope(env, "party-revocation", authority)));
    } catch {
      untrusted.add(claimed(env));
    }
  }

  function resolve(name) {
    const own = entries.filter((e) => e.name === name);
    if (!own.length) return { status: "unknown" };
    const revs = revocations.filter((r) => r.name === name);
    const alive = own.filter((e) => !revs.some((r) => e.issued <= r.at));
    if (!alive.length) return { status: "revoked" };
    const valid = alive.filter((e) => e.nb <= now && now < e.na);
    if (valid.length) return { status: "active", entry: valid.reduce((a, b) => (b.issued > a.issued ? b : a)) };
    return { status: alive.every((e) => e.nb > now) ? "not-yet-valid" : "expired" };
  }

  return {
    untrusted,
    require(name, roles) {
      if (untrusted.has(name)) throw new TrustError("untrusted", name);
      const res = resolve(name);
      if (res.status !== "active") throw new TrustError(res.status, name);
      if (!roles.includes(res.entry.role)) throw new TrustError("role", name, res.entry.role);
      return res.entry;
    },
    inForce(roles) {
      const names = [...new Set(entries.map((e) => e.name))].sort();
      return names
        .filter((n) => !untrusted.has(n))
        .map((n) => resolve(n))
        .filter((r) => r.status === "active" && roles.includes(r.entry.role))
        .map((r) => r.entry);
    },
  };
}
