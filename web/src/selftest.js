// What the tests call inside the page (tests/integration/test_web.py), through globalThis.labrelay: the page's own
// modules on the shared vectors. Pure functions; nothing here touches keys or the relay.
import { importVerifyKey, verifyEnvelope } from "./crypto.js";

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
  const { runAll } = await import("./vectors.js");
  const ref = await (await fetch("/data/refdata.json")).json();
  return runAll(vectors, ref);
}
