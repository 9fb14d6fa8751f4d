// A party's directory (DIR/NAME/, labrelay/client/keystore.py), read from files the user picks. Private keys are
// imported into WebCrypto (not extractable) or kept in this page's memory; nothing is uploaded or stored.
import { identityToRecipient } from "age-encryption";
import { authorityKeyId, importAuthorityKey, importSigningKey } from "./crypto.js";

const KNOWN = ["party.json", "signing.key", "authority.pub", "identity.txt", "pseudonym.key", "policies.json"];
// The age identities identity.txt may hold (crypto/keys.py IDENTITY_PREFIXES): hybrid ML-KEM-768 + X25519
// (post-quantum, what `party new` makes) and classic X25519 (`party new --classic`, or kept from before a rotation).
export const IDENTITY_PREFIXES = Object.freeze(["AGE-SECRET-KEY-PQ-1", "AGE-SECRET-KEY-1"]);

export async function loadParty(files) {
  const byName = {};
  for (const file of files) {
    const base = file.name.split("/").pop();
    if (KNOWN.includes(base)) byName[base] = await file.text();
  }
  for (const needed of ["party.json", "signing.key", "authority.pub"]) {
    if (!byName[needed]) throw new PartyFileError("missing", needed);
  }
  let doc;
  try {
    doc = JSON.parse(byName["party.json"]);
  } catch {
    throw new PartyFileError("malformed", "party.json");
  }
  const party = {
    name: String(doc.name),
    role: String(doc.role),
    region: doc.region ?? null,
    signingKey: await importSigningKey(byName["signing.key"]).catch(() => {
      throw new PartyFileError("malformed", "signing.key");
    }),
    authority: await importAuthorityKey(byName["authority.pub"]).catch(() => {
      throw new PartyFileError("malformed", "authority.pub");
    }),
    identities: [],
    pseudonymKey: null,
    keptPolicy: null, // policies.json: the newest routing policy this lab verified (policy.js refuses older ones)
  };
  if (byName["identity.txt"]) {
    for (const line of byName["identity.txt"].split(/\r?\n/)) {
      const id = line.trim();
      if (!IDENTITY_PREFIXES.some((prefix) => id.startsWith(prefix))) continue; // comments, blank lines
      let recipient;
      try {
        recipient = await identityToRecipient(id);
      } catch {
        throw new PartyFileError("malformed", "identity.txt"); // as AgeIdentity.load_all: refused now, not later
      }
      party.identities.push({ identity: id, recipient });
    }
  }
  if (byName["policies.json"]) {
    let kept;
    try {
      kept = JSON.parse(byName["policies.json"]).authorities[authorityKeyId(byName["authority.pub"])];
    } catch {
      throw new PartyFileError("malformed", "policies.json");
    }
    party.keptPolicy = kept || null;
  }
  if (byName["pseudonym.key"]) {
    const key = byName["pseudonym.key"].trim();
    if (!/^[0-9a-f]{64}$/.test(key)) throw new PartyFileError("malformed", "pseudonym.key");
    party.pseudonymKey = key;
  }
  return party;
}

export class PartyFileError extends Error {
  constructor(kind, file) {
    super(`${kind}: ${file}`);
    this.kind = kind;
    this.file = file;
  }
}
