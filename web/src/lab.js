// The lab upload page: the same steps as `labrelay send` (labrelay/client/routed.py), in the browser.
// 1. the results file is read and validated here, with the CLI's rules (validate.js, tested on the same vectors);
// 2. the routing policy and every recipient's entry are verified against the authority key the lab pinned (the
//    policy also for its validity, the withdrawals, and, with the lab's policies.json, a rollback: policy.js);
// 3. each recipient's records (only its fields) are gzip'd and age-encrypted here, to its verified key;
// 4. a manifest per transfer is signed with the lab's key, and the ciphertext is uploaded resumably (tus).
// The relay receives ciphertext and signed metadata only. Every record read is accounted for on screen: sent,
// rejected (the rejection report, downloadable) or held for a recipient that cannot take it yet (the review file,
// downloadable); both files are made in this browser and never leave it.
import { Encrypter } from "age-encryption";
import { t, tn } from "./i18n.js";
import { hex, rfc3339, sha256, signEnvelope } from "./crypto.js";
import { trustedDirectory } from "./directory.js";
import { signedFetcher } from "./httpsig.js";
import { loadParty } from "./party.js";
import { NO_ARS, openResults, runPipeline } from "./pipeline.js";
import { FIELDS, REQUIRED } from "./records.js";
import { verifiedPolicy } from "./policy.js";
import { classicRecipients, destinations, Router, UsageError } from "./route.js";
import { uploadResumable } from "./upload.js";
import { NotResultsError } from "./validate.js";
import { bytes, el, fail, say, table } from "./ui.js";

const TTLS = [["1d", 1], ["3d", 3], ["7d", 7], ["14d", 14], ["30d", 30]];

class Refused extends Error {
  translated = true;
}

let refdataCache;
async function refdata() {
  if (!refdataCache) refdataCache = await (await fetch("/data/refdata.json", { cache: "force-cache" })).json();
  return refdataCache;
}

/** An age file sealed to one recipient, hybrid post-quantum (`age1pq1…`) or classic (`age1…`): one stanza, never a
 * mix of the two kinds (which would leave the file open to whoever breaks X25519). */
async function seal(recipient, plaintext) {
  const encrypter = new Encrypter();
  encrypter.addRecipient(recipient);
  return encrypter.encrypt(plaintext);
}

async function gzip(text) {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// What pipeline.check_kind names (the CLI's words) → the page's key for it.
const KINDS = {
  "an Excel workbook (.xlsx)": "xlsx",
  "an OpenDocument spreadsheet (.ods)": "ods",
  "a ZIP archive (or an Office document)": "zip",
  "an Excel 97-2003 workbook (.xls) or an old Office document": "xls",
  "UTF-16 text": "utf16",
  "a PDF document": "pdf",
  "a gzip-compressed file": "gzip",
  "an age-encrypted file": "age",
  "a binary file": "binary",
};

/** The page's own words for a file the CLI would refuse whole (NotResults), naming the file. */
function notResults(err, file) {
  if (err.kind) return t(`notResults.${KINDS[err.kind] ?? "binary"}`, { file });
  if (err.format) return t(`notResults.${err.format}`, { file });
  if (err.noHeader) {
    const required = FIELDS.filter((f) => REQUIRED.has(f)).join(", ");
    return t("notResults.noHeader", { file, fields: err.noHeader, required });
  }
  if (err.missing) {
    const required = FIELDS.filter((f) => REQUIRED.has(f)).join(", ");
    return t("notResults.columns", {
      file,
      missing: err.missing.join(", "),
      found: err.found.map((c) => c || '""').slice(0, 30).join(", ") + (err.found.length > 30 ? ", …" : ""),
      required,
    });
  }
  if (err.twice) return t("notResults.twice", { file, columns: err.twice.join(", ") });
  if (/is empty or has no header line/.test(err.message)) return t("notResults.empty", { file });
  return t("notResults.header", { file });
}

/** The page's own words for a routing refusal (route.Router's UsageError). */
function routingRefusal(err) {
  if (err.reason === "not-enrolled") return t("lab.notEnrolled", { recipients: err.names.join(", ") });
  if (err.reason === "no-recipient") return t("lab.noRecipient");
  if (err.reason === "no-pseudonym-key") return t("lab.noPseudonymKey");
  return `${t("lab.routing")} ${err.message}`;
}

/** A link that saves `text` as `name`: made here (Blob + object URL), nothing is sent anywhere. */
function download(id, name, text, label, urls) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  urls.push(url);
  return el("a", { id, class: "button", href: url, download: name }, label);
}

export async function labPage(main) {
  const partyFiles = el("input", { type: "file", id: "party-files", multiple: true });
  const results = el("input", { type: "file", id: "results-file", accept: ".csv,text/csv" });
  const ttl = el("select", { id: "ttl" }, TTLS.map(([v, d]) => el("option", { value: d, selected: v === "7d" }, t("lab.days", { n: d }))));
  const report = el("div", { id: "report" });
  const sent = el("div", { id: "sent" });
  const send = el("button", { type: "submit", id: "send", class: "primary" }, t("lab.send"));
  let urls = []; // this run's download links, released at the next run

  async function run(event) {
    event.preventDefault();
    send.disabled = true;
    sent.replaceChildren();
    report.replaceChildren();
    for (const url of urls) URL.revokeObjectURL(url);
    urls = [];
    try {
      if (!results.files.length) throw new Refused(t("lab.noFile"));
      if (!partyFiles.files.length) throw new Refused(t("lab.noParty"));
      const party = await loadParty(partyFiles.files);
      if (party.role !== "lab") throw new Refused(t("lab.notLab", { party: party.name, role: party.role }));
      const file = results.files[0];
      const source = new Uint8Array(await file.arrayBuffer());

      // Local first, as `labrelay send`: is this a results file at all? (nothing has been asked of the relay yet)
      say(t("lab.reading"));
      let read;
      try {
        read = openResults(source, { name: file.name });
      } catch (err) {
        if (err instanceof NotResultsError) throw new Refused(notResults(err, file.name));
        throw err;
      }

      const signed = signedFetcher(party);
      document.getElementById("who").textContent = party.name;
      say(t("lab.verifying"));
      const directory = await trustedDirectory(await (await signed("/v1/directory")).json(), party.authority);
      const policy = await verifiedPolicy(
        await (await signed("/v1/policies/current")).json(),
        await (await signed("/v1/policies/withdrawals")).json(),
        party.authority,
        party.keptPolicy,
      );

      say(t("lab.validating"));
      const ref = await refdata();
      const regions = new Set(Object.values(ref.department_regions));
      // As `labrelay send`: a recipient the relay served a forged record for is refused as such, not routed
      // around (its region's records quietly held for review would hide the forgery).
      const addressed = new Set(destinations(policy, regions).map((d) => d.name));
      for (const name of [...directory.untrusted].filter((n) => addressed.has(n)).sort()) {
        directory.require(name, ["recipient"]);
      }
      const enrolled = new Set(directory.inForce(["recipient"]).map((e) => e.name));
      let router;
      try {
        router = new Router(policy, regions, enrolled, { pseudonymKey: party.pseudonymKey });
      } catch (err) {
        if (err instanceof UsageError) throw new Refused(routingRefusal(err));
        throw err;
      }
      const entries = Object.fromEntries(router.destinations.map((d) => [d.name, directory.require(d.name, ["recipient"])]));
      // require_pq (policy.Policy.classic_refusal): a recipient still on a classic X25519 key is refused, and the
      // whole send with it, before anything is validated, sealed or uploaded.
      const classic = classicRecipients(policy, Object.values(entries));
      if (classic.length) {
        throw new Refused(tn("lab.classicKey", classic.length, { policy: policy.version, recipients: classic.join(", ") }));
      }
      const unsupported = router.destinations.filter((d) => d.rule.format !== "csv").map((d) => d.name);
      if (unsupported.length) throw new Refused(t("lab.format", { recipients: unsupported.join(", ") }));
      const batch = await runPipeline(source, {
        policy,
        router,
        communes: ref.communes,
        departmentRegions: ref.department_regions,
        today: rfc3339(new Date()).slice(0, 10),
        name: file.name,
        read,
      });
      const { summary } = batch;
      showReport(batch, file.name);
      if (!summary.reconciled) throw new Refused(t("lab.unreconciled"));

      const toSend = router.destinations.filter((d) => batch.sent[d.name].length);
      if (!toSend.length) {
        // Nothing for anyone: never the success banner; say why.
        let why;
        if (summary.read === 0) why = t("lab.nothing.empty");
        else if (summary.rejected === summary.read) why = tn("lab.nothing.rejected", summary.rejected);
        else if (summary.held_for_review) why = tn("lab.nothing.held", summary.held_for_review);
        else why = tn("lab.nothing.addressed", summary.accepted);
        say(why, "warn");
        return;
      }

      const now = new Date(Math.floor(Date.now() / 1000) * 1000);
      const deadline = new Date(now.getTime() + Number(ttl.value) * 86400_000);
      const batchId = crypto.randomUUID();
      const sourceSha256 = hex(await sha256(source)); // the batch's identity: recipients decline a second copy
      const rows = [];
      for (const dest of toSend) {
        const records = batch.sent[dest.name];
        const entry = entries[dest.name]; // every recipient verified before anything is encrypted
        say(t("lab.sealing", { recipient: dest.name }));
        const ciphertext = await seal(entry.age_recipient, await gzip(batch.outputs[dest.name]));
        const manifest = {
          type: "transfer-manifest",
          v: 1,
          transfer_id: crypto.randomUUID(),
          batch_id: batchId,
          sender: party.name,
          recipient: entry.name,
          recipient_key: entry.age_recipient,
          size: ciphertext.length,
          sha256: hex(await sha256(ciphertext)),
          record_count: records.length,
          media_type: "text/csv",
          created: rfc3339(now),
          deadline: rfc3339(deadline),
          policy_version: policy.version,
          compression: "gzip",
          source_sha256: sourceSha256,
        };
        const envelope = await signEnvelope(manifest, party.signingKey, party.name);
        const created = await signed("/v1/transfers", { method: "POST", body: envelope });
        const progress = el("progress", { max: ciphertext.length, value: 0, "aria-label": dest.name });
        const row = [dest.name, String(records.length), bytes(ciphertext.length), progress, el("code", {}, manifest.transfer_id.slice(0, 8))];
        rows.push(row);
        sent.replaceChildren(el("h2", {}, t("lab.transfers")), table("sent-table",
          [t("col.recipient"), t("col.records"), t("col.size"), t("col.progress"), t("col.transfer")], rows, ""));
        await uploadResumable(party, created.headers.get("location"), new Blob([ciphertext]), (n) => { progress.value = n; });
      }
      const held = summary.held_for_review;
      say(t("lab.done", { n: rows.length }) + (held ? ` ${tn("lab.doneHeld", held)}` : ""), "ok");
    } catch (err) {
      fail(err);
    } finally {
      send.disabled = false;
    }
  }

  function showReport(batch, fileName) {
    const { summary } = batch;
    const tally = new Map();
    const count = (key) => tally.set(key, (tally.get(key) ?? 0) + 1);
    for (const r of batch.rejections) count(`rejected\u0000${r.reason}`);
    for (const r of batch.held) count(`held\u0000${r._reason}`);
    const reasons = [...tally].sort((a, b) => b[1] - a[1]).map(([key, n]) => {
      const [kind, reason] = key.split("\u0000");
      return [t(kind === "held" ? "lab.review" : "lab.rejected"), t(`reason.${reason}`), String(n)];
    });
    const first = batch.rejections.slice(0, 20).map((r) => [String(r.record), r.field, t(`reason.${r.reason}`)]);
    const base = fileName.replace(/\.[^.]*$/, "") || "results";

    // Per recipient: what it gets (enrolled), or what is held for it (not enrolled, or no ARS for the residence).
    const perRecipient = Object.entries(summary.per_recipient)
      .map(([name, n]) => [name, String(n), n ? t("lab.toSend") : t("lab.nothingFor")]);
    const heldLines = Object.entries(summary.held_for).map(([name, c]) => el("li", {},
      name === NO_ARS
        ? tn("lab.heldNoArs", c.records, { positives: tn("lab.positives", c.positives) })
        : tn(name.startsWith("ars-") ? "lab.heldArs" : "lab.heldFor", c.records, {
          recipient: name, positives: tn("lab.positives", c.positives),
        })));

    const downloads = [];
    if (batch.rejections.length) {
      downloads.push(download("download-rejections", `${base}.rejections.csv`, batch.rejectionsCsv,
        tn("lab.downloadRejections", batch.rejections.length), urls));
    }
    if (batch.held.length) {
      downloads.push(download("download-held", `${base}.review.csv`, batch.review,
        tn("lab.downloadHeld", batch.held.length), urls));
    }

    report.replaceChildren(
      el("h2", {}, t("lab.report")),
      el("dl", { class: "facts", id: "counts" },
        el("dt", {}, t("lab.read")), el("dd", { id: "count-read" }, String(summary.read)),
        el("dt", {}, t("lab.accepted")), el("dd", { id: "count-accepted" }, String(summary.accepted)),
        el("dt", {}, t("lab.rejected")), el("dd", { id: "count-rejected" }, String(summary.rejected)),
        el("dt", {}, t("lab.review")), el("dd", { id: "count-review" }, String(summary.held_for_review))),
      batch.ignored.length ? el("p", { class: "hint", id: "ignored" }, t("lab.ignored", { columns: batch.ignored.map((c) => c || '""').join(", ") })) : "",
      batch.missing.length ? el("p", { class: "hint", id: "optional" }, t("lab.optional", { columns: batch.missing.join(", ") })) : "",
      heldLines.length
        ? el("div", { class: "notice", id: "held" }, el("p", {}, t("lab.heldIntro")), el("ul", {}, heldLines))
        : "",
      el("h2", {}, t("lab.recipients")),
      table("recipients", [t("col.recipient"), t("col.records"), t("col.outcome")], perRecipient, t("lab.noRecipients")),
      downloads.length
        ? el("div", { class: "row", id: "downloads" }, downloads, el("span", { class: "hint" }, t("lab.downloadsLocal")))
        : "",
      table("reasons", [t("col.outcome"), t("col.reason"), t("col.fields")], reasons, t("lab.noRejections")),
      first.length
        ? el("details", {}, el("summary", {}, tn("lab.firstRejections", first.length)),
          table("rejections", [t("col.record"), t("col.field"), t("col.reason")], first, ""))
        : "",
    );
  }

  const form = el("form", { id: "lab-form", on: { submit: run } },
    el("label", { for: "party-files" }, t("lab.partyFiles")), partyFiles,
    el("p", { class: "hint" }, t("files.local")),
    el("label", { for: "results-file" }, t("lab.results")), results,
    el("p", { class: "hint" }, t("lab.resultsHint")),
    el("label", { for: "ttl" }, t("lab.ttl")), ttl,
    send);
  main.replaceChildren(el("h1", {}, t("lab.title")), el("p", {}, t("lab.intro")), form, report, sent);
}
