// RFC 9421 request signatures, the labrelay profile (docs/protocol.md, labrelay/crypto/httpsig.py):
// label "labrelay", tag "labrelay-v1", alg ed25519, keyid = party name, created + a 144-bit nonce; covered
// components @method, @target-uri, content-digest (RFC 9530, sha-256) with a body, and content-type,
// upload-offset, range when present.
import { b64, b64u, enc, sha256, sign } from "./crypto.js";

const COVERED_HEADERS = ["content-type", "upload-offset", "range"];

function sfString(s) {
  return `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/** Signature-Input and Signature for a request; `headers` is a plain object of lower-case names. */
export async function signatureHeaders({ method, url, headers, key, keyid, created, nonce }) {
  const components = ["@method", "@target-uri"];
  const values = { "@method": method.toUpperCase(), "@target-uri": url };
  for (const name of ["content-digest", ...COVERED_HEADERS]) {
    if (headers[name] !== undefined) {
      components.push(name);
      values[name] = String(headers[name]).trim();
    }
  }
  created = created ?? Math.floor(Date.now() / 1000);
  nonce = nonce ?? b64u(crypto.getRandomValues(new Uint8Array(18)));
  const params =
    `(${components.map(sfString).join(" ")});created=${created};nonce=${sfString(nonce)}` +
    `;keyid=${sfString(keyid)};alg="ed25519";tag="labrelay-v1"`;
  const base = components.map((c) => `${sfString(c)}: ${values[c]}`).join("\n") + `\n"@signature-params": ${params}`;
  const signature = await sign(key, enc.encode(base));
  return { "signature-input": `labrelay=${params}`, signature: `labrelay=:${b64(signature)}:` };
}

export async function contentDigest(bytes) {
  return `sha-256=:${b64(await sha256(bytes))}:`;
}

/** A party's signed fetch against the relay (same origin). Throws a RelayError with the problem document. */
export class RelayError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** The RelayError of a response that is not ok, with its problem document when it has one. */
export async function relayError(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    /* not a problem document */
  }
  return new RelayError(response.status, problem);
}

export function signedFetcher(identity) {
  return async function signedFetch(path, { method = "GET", body, headers = {} } = {}) {
    const url = new URL(path, location.origin).href;
    const h = {};
    for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = v;
    let bytes;
    if (body !== undefined) {
      bytes = body instanceof Uint8Array ? body : enc.encode(JSON.stringify(body));
      if (!(body instanceof Uint8Array)) h["content-type"] = "application/json";
      h["content-digest"] = await contentDigest(bytes);
    }
    Object.assign(h, await signatureHeaders({ method, url, headers: h, key: identity.signingKey, keyid: identity.name }));
    const response = await fetch(url, { method, headers: h, body: bytes, credentials: "omit", cache: "no-store" });
    if (!response.ok) throw await relayError(response);
    return response;
  };
}
