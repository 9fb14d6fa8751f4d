// The routing policy as the lab page uses it, verified as `labrelay send` verifies it (labrelay/client/policy.py;
// docs/threat-model.md, T13 and T30): signed by the authority the lab pinned, within its validity, its version not
// withdrawn (every withdrawal the relay serves must verify too), and, when the lab's policies.json is among the
// files chosen, not older than the newest policy the lab verified before. The page keeps nothing itself: only the
// command line writes policies.json.
import { parse as parseToml } from "smol-toml";
import { hex, sha256, enc, verifyEnvelope } from "./crypto.js";
import { t } from "./i18n.js";
import { parsePolicy } from "./route.js";

class PolicyRefused extends Error {
  translated = true;
}

const label = (version, issue) => `${version} (issue ${issue})`;

/** The signed payload and the policy it carries, if the pinned authority signed it and it is well formed. */
async function signedPolicy(envelope, authority) {
  const signed = await verifyEnvelope(envelope, "routing-policy", authority);
  const issuedAt = Date.parse(signed.issued_at);
  const notAfter = Date.parse(signed.not_after);
  if (signed.v !== 2 || typeof signed.toml !== "string" || !Number.isSafeInteger(signed.issue) || signed.issue < 1
    || !(issuedAt < notAfter)) throw new PolicyRefused(t("lab.policy"));
  const policy = parsePolicy(parseToml(signed.toml));
  if (signed.version !== policy.version) throw new PolicyRefused(t("lab.policy"));
  return { signed, policy, notAfter };
}

/**
 * The newest routing policy, as the recipient page uses it (client/policy.py recipient_policy): for its require_pq.
 * Signed by the pinned authority and not older than one this party verified before (`kept`, from policies.json);
 * its validity and withdrawals are not checked (what the relay accepted under it may still be fetched). `envelope`
 * null: the relay holds no policy, and this returns null.
 */
export async function recipientPolicy(envelope, authority, kept) {
  if (envelope === null) return null;
  const { signed, policy } = await signedPolicy(envelope, authority);
  if (kept && Number.isSafeInteger(kept.issue) && signed.issue < kept.issue) {
    throw new PolicyRefused(t("inbox.policyRollback", {
      policy: label(policy.version, signed.issue), kept: label(kept.version, kept.issue),
    }));
  }
  // issuedAt: payloads sealed to classic keys before it still open (inbox.js openTransfer)
  return Object.freeze({ ...policy, issuedAt: Date.parse(signed.issued_at), label: label(policy.version, signed.issue) });
}

/** The policy to route under, or a translated refusal. `kept`: this authority's record in policies.json, if any. */
export async function verifiedPolicy(envelope, withdrawalsDoc, authority, kept, now = Date.now()) {
  const { signed, policy, notAfter } = await signedPolicy(envelope, authority);
  const name = label(policy.version, signed.issue);

  const withdrawn = new Map(Object.entries((kept && kept.withdrawn) || {}));
  const list = withdrawalsDoc && withdrawalsDoc.withdrawals;
  if (!Array.isArray(list)) throw new PolicyRefused(t("lab.policy"));
  for (const envelope of list) {
    const withdrawal = await verifyEnvelope(envelope, "policy-withdrawal", authority); // a forged one: refused
    if (withdrawal.v !== 1 || typeof withdrawal.version !== "string") throw new PolicyRefused(t("lab.policy"));
    withdrawn.set(withdrawal.version, String(withdrawal.reason));
  }
  if (withdrawn.has(policy.version)) {
    throw new PolicyRefused(t("lab.policyWithdrawn", { policy: name, reason: withdrawn.get(policy.version) }));
  }
  if (now >= notAfter) throw new PolicyRefused(t("lab.policyExpired", { policy: name, end: signed.not_after }));
  if (kept && Number.isSafeInteger(kept.issue)) {
    const before = label(kept.version, kept.issue);
    const same = signed.issue === kept.issue
      && (signed.version !== kept.version || hex(await sha256(enc.encode(signed.toml))) !== kept.sha256);
    if (signed.issue < kept.issue || same) throw new PolicyRefused(t("lab.policyRollback", { policy: name, kept: before }));
  }
  return policy;
}
