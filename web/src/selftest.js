// What the tests call inside the page (tests/integration/test_web.py), through globalThis.labrelay: the page's own
// modules on the shared vectors. Pure functions; nothing here touches keys or the relay.
import { importAuthorityKey, importVerifyKey, verifyEnvelope } from "./crypto.js";
import { trustedDirectory } from "./directory.js";
import { verifyManifest } from "./inbox.js";
import { verifiedPolicy } from "./policy.js";
import { runAll } from "./vectors.js";

export async function checkEnvelopeVector(vector) {
  const key = await importVerifyKey(vector.public_b64url);
  const genuine = await verifyEnvelope(vector.envelope, vector.payload.type, key).then(() => true, () => false);
  const forged = structuredClone(vector.envelope);
  forged.payload.size += 1;
  const tampered = await verifyEnvelope(forged, vector.payload.type, key).then(() => true, () => false);
  return { genuine, tampered };
}

/** Run the shared validation and routing vectors (tests/vectors/web_validation.json) through this page's modules. */
export async function runVectors(vectors) {
  const ref = await (await fetch("/data/refdata.json")).json();
  return runAll(vectors, ref);
}

/** The directory check of the pages on a given directory document: "active", or the refusal's code. */
export async function requireParty(doc, authorityPem, name, roles) {
  const directory = await trustedDirectory(doc, await importAuthorityKey(authorityPem));
  try {
    directory.require(name, roles);
    return "active";
  } catch (err) {
    return err.code ?? String(err);
  }
}

/** The recipient page's manifest check: "ok", or the refusal's message. `party`: {name, recipients: [age1…]}. */
export async function checkManifest(doc, authorityPem, party, envelope, transferId, now = Date.now()) {
  const directory = await trustedDirectory(doc, await importAuthorityKey(authorityPem));
  const holder = { name: party.name, identities: party.recipients.map((recipient) => ({ recipient })) };
  try {
    await verifyManifest(holder, directory, envelope, transferId, now);
    return "ok";
  } catch (err) {
    return err.message || String(err);
  }
}

/** The lab page's policy check: "ok <version>", or the refusal's message. `kept`: a policies.json record, or null. */
export async function checkPolicy(envelope, withdrawals, authorityPem, kept, now = Date.now()) {
  try {
    const policy = await verifiedPolicy(envelope, { withdrawals }, await importAuthorityKey(authorityPem), kept, now);
    return `ok ${policy.version}`;
  } catch (err) {
    return err.message || String(err);
  }
}
