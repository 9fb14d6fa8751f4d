// The directory as this page sees it: only what verifies under the authority key the party pinned
// (labrelay/client/trust.py and domain/parties.py `resolve`). A name with any record that does not verify is
// refused outright: a relay serving a forged entry is trying to get payloads sealed to its own key.
import { verifyEnvelope } from "./crypto.js";

export class TrustError extends Error {
  constructor(code, name, detail) {
    super(`${code}: ${name}${detail ? ` (${detail})` : ""}`);
    this.code = code;
    this.party = name;
  }
}

const t = (s) => Date.parse(s);

export async function trustedDirectory(doc, authority, now = Date.now()) {
  const entries = [];
  const revocations = [];
  const untrusted = new Set();
  for (const env of doc.entries || []) {
    try {
      const p = await verifyEnvelope(env, "party-entry", authority);
      entries.push(p);
    } catch {
      untrusted.add(env && env.payload && env.payload.name);
    }
  }
  for (const env of doc.revocations || []) {
    try {
      revocations.push(await verifyEnvelope(env, "party-revocation", authority));
    } catch {
      untrusted.add(env && env.payload && env.payload.name);
    }
  }

  function resolve(name) {
    const own = entries.filter((e) => e.name === name);
    if (!own.length) return { status: "unknown" };
    const revs = revocations.filter((r) => r.name === name);
    const alive = own.filter((e) => !revs.some((r) => t(e.issued_at) <= t(r.revoked_at)));
    if (!alive.length) return { status: "revoked" };
    const valid = alive.filter((e) => t(e.not_before) <= now && now < t(e.not_after));
    if (valid.length) return { status: "active", entry: valid.reduce((a, b) => (t(b.issued_at) > t(a.issued_at) ? b : a)) };
    return { status: alive.every((e) => t(e.not_before) > now) ? "not-yet-valid" : "expired" };
  }

  return {
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
