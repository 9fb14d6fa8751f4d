// Resumable upload with tus-js-client, every request signed (RFC 9421) like the CLI's: the stack below computes
// the chunk's Content-Digest and signs each HEAD and PATCH just before it leaves.
import { DefaultHttpStack, Upload } from "tus-js-client";
import { contentDigest, signatureHeaders } from "./httpsig.js";

class SignedRequest {
  constructor(inner, party) {
    this.inner = inner;
    this.party = party;
    this.headers = {};
  }
  getMethod() { return this.inner.getMethod(); }
  getURL() { return this.inner.getURL(); }
  setHeader(name, value) {
    this.headers[name.toLowerCase()] = value;
    this.inner.setHeader(name, value);
  }
  getHeader(name) { return this.inner.getHeader(name); }
  setProgressHandler(handler) { this.inner.setProgressHandler(handler); }
  abort() { return this.inner.abort(); }
  getUnderlyingObject() { return this.inner.getUnderlyingObject(); }
  async send(body = null) {
    if (body !== null) {
      const bytes = new Uint8Array(await body.arrayBuffer());
      this.setHeader("Content-Digest", await contentDigest(bytes));
    }
    const url = new URL(this.getURL(), location.origin).href;
    const signature = await signatureHeaders({
      method: this.getMethod(), url, headers: this.headers, key: this.party.signingKey, keyid: this.party.name,
    });
    for (const [name, value] of Object.entries(signature)) this.inner.setHeader(name, value);
    return this.inner.send(body);
  }
}

class SignedStack {
  constructor(party) {
    this.inner = new DefaultHttpStack({});
    this.party = party;
  }
  createRequest(method, url) { return new SignedRequest(this.inner.createRequest(method, url), this.party); }
  getName() { return "labrelay-signed"; }
}

/** Chunk size: a sixteenth of the payload, between 64 KiB and 8 MiB (each chunk is read, hashed and signed). */
export function chunkSize(size) {
  return Math.min(8 * 1024 * 1024, Math.max(64 * 1024, Math.ceil(size / 16)));
}

/** Upload `blob` to the transfer created at `uploadUrl`; resolves when the relay holds every byte. */
export function uploadResumable(party, uploadUrl, blob, onProgress) {
  return new Promise((resolve, reject) => {
    const upload = new Upload(blob, {
      uploadUrl: new URL(uploadUrl, location.origin).href,
      chunkSize: chunkSize(blob.size),
      retryDelays: [0, 500, 1000, 2000, 4000, 8000],
      storeFingerprintForResuming: false,
      httpStack: new SignedStack(party),
      onProgress: (sent, total) => onProgress && onProgress(sent, total),
      onSuccess: () => resolve(),
      onError: (err) => reject(err),
    });
    upload.start();
  });
}
