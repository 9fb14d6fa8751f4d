// Keys, signed objects and hashes, as the Python client makes them (labrelay/crypto/envelopes.py, keys.py).
// Everything private stays in this page: key files are read from the user's disk and never sent anywhere.
import canonicalize from "canonicalize";
import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";

export const enc = new TextEncoder();
const dec = new TextDecoder();

export function b64u(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function unb64u(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

export function b64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An incremental SHA-256 (WebCrypto has none): for ciphertexts hashed as they are produced. */
export function sha256Stream() {
  return nobleSha256.create();
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function pemBody(pem, label) {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]+?)-----END ${label}-----`).exec(pem);
  if (!m) throw new Error(`not a PEM ${label}`);
  return Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

/** signing.key: Ed25519 private key, PKCS#8 PEM. Not extractable once imported. */
export async function importSigningKey(pem) {
  return crypto.subtle.importKey("pkcs8", pemBody(pem, "PRIVATE KEY"), { name: "Ed25519" }, false, ["sign"]);
}

/** authority.pub: the directory authority's Ed25519 key (SPKI PEM) that the party pinned when it was created. */
export async function importAuthorityKey(pem) {
  return crypto.subtle.importKey("spki", pemBody(pem, "PUBLIC KEY"), { name: "Ed25519" }, false, ["verify"]);
}

/** authority.pub's raw key, base64url: how policies.json names the authority it kept a policy for. */
export function authorityKeyId(pem) {
  const der = pemBody(pem, "PUBLIC KEY");
  if (der.length !== 44) throw new Error("not an Ed25519 public key");
  return b64u(der.subarray(12));
}

/** A party's signing key as the directory carries it: 32 raw bytes, base64url. */
export async function importVerifyKey(raw) {
  return crypto.subtle.importKey("raw", unb64u(raw), { name: "Ed25519" }, false, ["verify"]);
}

export async function sign(key, bytes) {
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key, bytes));
}

export function canonical(payload) {
  return enc.encode(canonicalize(payload));
}

function message(payload) {
  const kind = payload && payload.type;
  if (typeof kind !== "string" || !kind) throw new Error("signed payload has no type");
  const head = enc.encode(`labrelay-signed-v1\n${kind}\n`);
  const body = canonical(payload);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

export async function signEnvelope(payload, key, signer) {
  return { payload, signer, alg: "ed25519", sig: b64u(await sign(key, message(payload))) };
}

/** The payload of `envelope` if it is an `expectedType` object signed by `key`; throws otherwise. */
export async function verifyEnvelope(envelope, expectedType, key) {
  const payload = envelope && envelope.payload;
  if (!payload || typeof payload !== "object") throw new Error("signed object without a payload");
  if (payload.type !== expectedType) throw new Error(`expected a ${expectedType}`);
  if (envelope.alg !== "ed25519" || typeof envelope.sig !== "string") throw new Error("unsupported signature");
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, unb64u(envelope.sig), message(payload));
  if (!ok) throw new Error(`${expectedType} refused: bad signature`);
  return payload;
}

export function rfc3339(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export function text(bytes) {
  return dec.decode(bytes);
}
