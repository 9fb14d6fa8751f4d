// The recipient page: list what waits, download, verify the manifest and the hash, decrypt here with the
// identity file (never uploaded), and send the signed receipt. The same checks as `labrelay fetch`
// (labrelay/client/fetch.py verify_manifest).
import { Decrypter } from "age-encryption";
import { t } from "./i18n.js";
import { hex, importVerifyKey, rfc3339, sha256, signEnvelope, verifyEnvelope } from "./crypto.js";
import { instant } from "./dates.js";
import { isPqRecipient, trustedDirectory } from "./directory.js";
import { signedFetcher } from "./httpsig.js";
import { loadParty } from "./party.js";
import { recipientPolicy } from "./policy.js";
import { classicRecipients } from "./route.js";
import { bytes, el, fail, say, table, when } from "./ui.js";

// The smallest age file sealed to one recipient (labrelay.domain.transfers.min_payload_bytes): a manifest declaring
// less names no payload this page could open. 200 bytes for a classic X25519 recipient; 1,659 for a hybrid
// post-quantum one, whose stanza carries the 1,120-byte ML-KEM-768 + X25519 encapsulation.
const MIN_PAYLOAD_BYTES = 200;
const MIN_PQ_PAYLOAD_BYTES = 1659;

export function minPayloadBytes(recipientKey) {
  return isPqRecipient(recipientKey) ? MIN_PQ_PAYLOAD_BYTES : MIN_PAYLOAD_BYTES;
}

class Refused extends Error {
  translated = true;
}

export async function verifyManifest(party, directory, envelope, transferId, now = Date.now()) {
  const sender = directory.require(envelope.signer, ["lab"]);
  const m = await verifyEnvelope(envelope, "transfer-manifest", await importVerifyKey(sender.signing_key));
  if (m.v !== 1 || m.sender !== envelope.signer || m.transfer_id !== transferId) throw new Refused(t("inbox.mismatch"));
  if (m.recipient !== party.name) throw new Refused(t("inbox.notMine"));
  if (!party.identities.some((i) => i.recipient === m.recipient_key)) throw new Refused(t("inbox.noKey"));
  let deadline;
  try {
    deadline = instant(m.deadline);
    instant(m.created);
  } catch {
    throw new Refused(t("inbox.mismatch"));
  }
  if (!Number.isSafeInteger(m.size) || m.size < minPayloadBytes(m.recipient_key) || !/^[0-9a-f]{64}$/.test(m.sha256)) {
    throw new Refused(t("inbox.mismatch"));
  }
  if (deadline <= now) throw new Refused(t("inbox.late"));
  return m;
}

// As `labrelay fetch` (client/fetch.py): a payload may inflate to 200 times its ciphertext, or 256 MiB.
const INFLATE_RATIO = 200;
const INFLATE_MIN = 256 * 1024 * 1024;

/** Records in what was decrypted, counted as `labrelay fetch` counts them for the receipt. */
export function countRecords(manifest, plaintext) {
  if (!isUnparsed(manifest)) {
    let newlines = 0;
    for (const b of plaintext) if (b === 10) newlines++;
    return Math.max(newlines - (manifest.media_type === "text/csv" ? 1 : 0), 0);
  }
  if (manifest.media_type !== "text/csv") return null;
  let rows = 0;
  for (const _ of csvRows(new TextDecoder().decode(plaintext))) rows++;
  return Math.max(rows - 1, 0);
}

async function gunzip(data, ceiling) {
  const reader = new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip")).getReader();
  const parts = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > ceiling) {
      await reader.cancel();
      throw new Refused(t("inbox.bomb"));
    }
    parts.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const CLOCK_SKEW_MS = 30_000; // domain/transfers.py CLOCK_SKEW: the lab's clock and the authority's may differ

/** Download, verify, decrypt one transfer; returns {manifest, plaintext}. Throws on any mismatch, and, when `policy`
 * requires post-quantum recipients, on a payload sealed to a classic key after it was issued (before downloading
 * it; client/policy.py classic_payload_refusal): one sealed before the switch, to a key kept after a rotation,
 * opens. */
export async function openTransfer(party, signed, directory, listing, policy = null) {
  const manifest = await verifyManifest(party, directory, listing.manifest, listing.transfer_id);
  const afterSwitch = policy && instant(manifest.created) > policy.issuedAt + CLOCK_SKEW_MS;
  if (afterSwitch && classicRecipients(policy, [{ name: party.name, age_recipient: manifest.recipient_key }]).length) {
    throw new Refused(t("inbox.classicPayload", { policy: policy.version }));
  }
  const response = await signed(`/v1/transfers/${encodeURIComponent(listing.transfer_id)}/payload`);
  const ciphertext = new Uint8Array(await response.arrayBuffer());
  if (ciphertext.length !== manifest.size || hex(await sha256(ciphertext)) !== manifest.sha256) {
    throw new Refused(t("inbox.hash"));
  }
  const decrypter = new Decrypter();
  decrypter.addIdentity(party.identities.find((i) => i.recipient === manifest.recipient_key).identity);
  let plaintext = await decrypter.decrypt(ciphertext);
  if (manifest.compression === "gzip") plaintext = await gunzip(plaintext, Math.max(INFLATE_RATIO * manifest.size, INFLATE_MIN));
  else if (manifest.compression) throw new Refused(t("inbox.compression"));
  return { manifest, plaintext };
}

/** The relay's newest routing policy (its signed envelope), or null when it holds none. */
async function currentPolicy(signed) {
  try {
    return await (await signed("/v1/policies/current")).json();
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

export async function sendReceipt(party, signed, manifest, recordCount) {
  const receipt = {
    type: "transfer-receipt",
    v: 1,
    transfer_id: manifest.transfer_id,
    sender: manifest.sender,
    recipient: manifest.recipient,
    sha256: manifest.sha256,
    size: manifest.size,
    record_count: recordCount,
    status: "decrypted",
    received_at: rfc3339(new Date()),
  };
  const envelope = await signEnvelope(receipt, party.signingKey, party.name);
  await signed(`/v1/transfers/${encodeURIComponent(manifest.transfer_id)}/receipt`, { method: "POST", body: envelope });
}

/** The rows of a CSV text as Python's csv.reader reads them (newline="", the separator sniffed as
 * `labrelay fetch` does): a line ending outside quotes ends a row, blank lines included (as []); a quote opens a
 * quoted field only at the start of a field. For counting records and for the preview. */
export function* csvRows(text) {
  const sample = text.slice(0, 4096);
  const sep = (sample.match(/;/g) || []).length > (sample.match(/,/g) || []).length ? ";" : ",";
  let row = [];
  let field = "";
  let quoted = false;
  let fieldStart = true;
  let open = false; // the last row has not ended yet
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
      continue;
    }
    if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      yield open ? [...row, field] : [];
      row = [];
      field = "";
      fieldStart = true;
      open = false;
      continue;
    }
    open = true;
    if (c === '"' && fieldStart) {
      quoted = true;
      fieldStart = false;
    } else if (c === sep) {
      row.push(field);
      field = "";
      fieldStart = true;
    } else {
      field += c;
      fieldStart = false;
    }
  }
  if (open) yield [...row, field];
}

/** Sent as it was (`send --as-is`), outside the routing policy: no policy_version (Manifest.unparsed). */
export function isUnparsed(manifest) {
  return manifest.policy_version === null || manifest.policy_version === undefined;
}

/** The routing a listed payload says it went through: its policy version, or a mark for an unparsed document. */
function routing(manifest) {
  if (isUnparsed(manifest)) {
    return el("span", { class: "badge unparsed", title: t("inbox.unparsedNotice") }, t("inbox.unparsed"));
  }
  return el("code", {}, String(manifest.policy_version));
}

function preview(plaintext, mediaType) {
  const text = new TextDecoder().decode(plaintext.subarray(0, 64 * 1024));
  if (mediaType === "text/csv") {
    const rows = [];
    for (const row of csvRows(text)) {
      if (row.length) rows.push(row);
      if (rows.length === 11) break;
    }
    if (rows.length) return el("div", { class: "scroll" }, table("preview", rows[0], rows.slice(1), ""));
  }
  return el("pre", { id: "preview" }, text.split("\n").filter(Boolean).slice(0, 11).join("\n"));
}

export async function inboxPage(main) {
  const files = el("input", { type: "file", id: "party-files", multiple: true });
  const list = el("div", { id: "inbox" });
  const opened = el("div", { id: "opened" });
  let party;
  let signed;
  let directory;
  let policy = null;

  async function refresh() {
    const doc = await (await signed("/v1/directory")).json();
    directory = await trustedDirectory(doc, party.authority);
    // As `labrelay fetch`: under require_pq, a recipient still on a classic key downloads nothing.
    policy = await recipientPolicy(await currentPolicy(signed), party.authority, party.keptPolicy);
    if (policy && policy.requirePq) {
      const own = directory.require(party.name, ["recipient"]);
      if (classicRecipients(policy, [own]).length) {
        list.replaceChildren();
        throw new Refused(t("inbox.classicKey", { policy: policy.version, party: party.name }));
      }
    }
    const { transfers } = await (await signed("/v1/transfers?box=inbox")).json();
    list.replaceChildren(table(
      "inbox-table",
      [t("col.transfer"), t("col.sender"), t("col.policy"), t("col.records"), t("col.size"), t("col.deadline"), ""],
      transfers.map((x) => [
        el("code", { title: x.transfer_id }, x.transfer_id.slice(0, 8)),
        x.sender,
        routing(x.manifest.payload),
        x.manifest.payload.record_count ?? "—",
        bytes(x.size),
        when(x.deadline),
        el("button", { type: "button", class: "primary", "data-transfer": x.transfer_id, on: { click: (e) => open(e, x) } },
          t("inbox.open")),
      ]),
      t("inbox.empty"),
    ));
    say(t("inbox.listed", { n: transfers.length }), "ok");
  }

  async function open(event, listing) {
    event.target.disabled = true;
    try {
      say(t("inbox.opening"));
      const { manifest, plaintext } = await openTransfer(party, signed, directory, listing, policy);
      const records = countRecords(manifest, plaintext);
      const ext = manifest.media_type === "text/csv" ? "csv" : manifest.media_type.includes("ndjson") ? "ndjson" : "bin";
      // The payload leaves the relay with the receipt: the receipt is sent once the user has saved the file.
      const save = el("button", { type: "button", id: "save", class: "primary", on: { click: async () => {
        save.disabled = true;
        try {
          const url = URL.createObjectURL(new Blob([plaintext], { type: "application/octet-stream" }));
          const link = el("a", { href: url, download: `${manifest.transfer_id}.${ext}`, hidden: true });
          document.body.append(link);
          link.click();
          link.remove();
          setTimeout(() => URL.revokeObjectURL(url), 60_000);
          await sendReceipt(party, signed, manifest, records);
          receipt.textContent = t("inbox.receiptSent");
          await refresh();
          say(t("inbox.receiptSent"), "ok");
        } catch (err) {
          save.disabled = false;
          fail(err);
        }
      } } }, t("inbox.save"));
      const receipt = el("p", { class: "hint", id: "receipt" }, t("inbox.receiptPending"));
      opened.replaceChildren(
        el("h2", {}, t("inbox.opened", { sender: manifest.sender })),
        isUnparsed(manifest) ? el("p", { class: "notice", id: "unparsed" }, t("inbox.unparsedNotice")) : "",
        el("p", { class: "badge open", id: "verified" }, records === null
          ? t("inbox.verifiedBytes", { size: bytes(plaintext.length) })
          : t("inbox.verified", { n: records })),
        save,
        receipt,
        preview(plaintext, manifest.media_type),
      );
      save.focus();
      say(t("inbox.decrypted"), "ok");
    } catch (err) {
      fail(err);
    } finally {
      event.target.disabled = false;
    }
  }

  const form = el("form", { id: "party-form", on: { submit: async (event) => {
    event.preventDefault();
    try {
      party = await loadParty(files.files);
      if (!party.identities.length) throw new Refused(t("inbox.noIdentity"));
      signed = signedFetcher(party);
      document.getElementById("who").textContent = party.name;
      await refresh();
    } catch (err) {
      fail(err);
    }
  } } },
    el("label", { for: "party-files" }, t("inbox.files")), files,
    el("p", { class: "hint" }, t("files.local")),
    el("button", { type: "submit", id: "list", class: "primary" }, t("inbox.list")));
  main.replaceChildren(el("h1", {}, t("inbox.title")), el("p", {}, t("inbox.intro")), form, list, opened);
}
