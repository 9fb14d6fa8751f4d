// The lab upload page: the same steps as `labrelay send` (labrelay/client/routed.py), in the browser.
// 1. the results file is read and validated here, with the CLI's rules (validate.js, tested on the same vectors);
// 2. the routing policy and every recipient's entry are verified against the authority key the lab pinned;
// 3. each recipient's records (only its fields) are gzip'd and age-encrypted here, to its verified key;
// 4. a manifest per transfer is signed with the lab's key, and the ciphertext is uploaded resumably (tus).
// The relay receives ciphertext and signed metadata only. Every record read is accounted for on screen.
import { Encrypter } from "age-encryption";
import { parse as parseToml } from "smol-toml";
import { t } from "./i18n.js";
import { hex, rfc3339, sha256, signEnvelope, verifyEnvelope } from "./crypto.js";
import { trustedDirectory } from "./directory.js";
import { signedFetcher } from "./httpsig.js";
import { loadParty } from "./party.js";
import { runPipeline } from "./pipeline.js";
import { destinations, parsePolicy, Router } from "./route.js";
import { uploadResumable } from "./upload.js";
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

async function gzip(text) {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function labPage(main) {
  const partyFiles = el("input", { type: "file", id: "party-files", multiple: true });
  const results = el("input", { type: "file", id: "results-file", accept: ".csv,text/csv" });
  const ttl = el("select", { id: "ttl" }, TTLS.map(([v, d]) => el("option", { value: d, selected: v === "7d" }, t("lab.days", { n: d }))));
  const report = el("div", { id: "report" });
  const sent = el("div", { id: "sent" });
  const send = el("button", { type: "submit", id: "send", class: "primary" }, t("lab.send"));

  async function run(event) {
    event.preventDefault();
    send.disabled = true;
    sent.replaceChildren();
    try {
      const party = await loadParty(partyFiles.files);
      if (party.role !== "lab") throw new Refused(t("lab.notLab", { party: party.name }));
      if (!results.files.length) throw new Refused(t("lab.noFile"));
      const signed = signedFetcher(party);
      document.getElementById("who").textContent = party.name;

      say(t("lab.verifying"));
      const directory = await trustedDirectory(await (await signed("/v1/directory")).json(), party.authority);
      const policyEnvelope = await (await signed("/v1/policies/current")).json();
      const signedPolicy = await verifyEnvelope(policyEnvelope, "routing-policy", party.authority);
      if (signedPolicy.v !== 1 || typeof signedPolicy.toml !== "string") throw new Refused(t("lab.policy"));
      const policy = parsePolicy(parseToml(signedPolicy.toml));
      if (signedPolicy.version !== policy.version) throw new Refused(t("lab.policy"));

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
      const router = new Router(policy, regions, enrolled, { pseudonymKey: party.pseudonymKey });
      const entries = Object.fromEntries(router.destinations.map((d) => [d.name, directory.require(d.name, ["recipient"])]));
      const unsupported = router.destinations.filter((d) => d.rule.format !== "csv").map((d) => d.name);
      if (unsupported.length) throw new Refused(t("lab.format", { recipients: unsupported.join(", ") }));
      const batch = await runPipeline(new Uint8Array(await results.files[0].arrayBuffer()), {
        policy,
        router,
        communes: ref.communes,
        departmentRegions: ref.department_regions,
        today: rfc3339(new Date()).slice(0, 10),
        name: results.files[0].name,
      });
      const { summary } = batch;
      showReport(batch);
      if (!summary.reconciled) throw new Refused(t("lab.unreconciled"));

      const now = new Date(Math.floor(Date.now() / 1000) * 1000);
      const deadline = new Date(now.getTime() + Number(ttl.value) * 86400_000);
      const batchId = crypto.randomUUID();
      const rows = [];
      for (const dest of router.destinations) {
        const records = batch.sent[dest.name];
        if (!records.length) continue;
        const entry = entries[dest.name]; // every recipient verified before anything is encrypted
        say(t("lab.sealing", { recipient: dest.name }));
        const encrypter = new Encrypter();
        encrypter.addRecipient(entry.age_recipient);
        const ciphertext = await encrypter.encrypt(await gzip(batch.outputs[dest.name]));
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
      say(t("lab.done", { n: rows.length }), "ok");
    } catch (err) {
      fail(err);
    } finally {
      send.disabled = false;
    }
  }

  function showReport(batch) {
    const { summary } = batch;
    const tally = new Map();
    for (const r of batch.rejections) tally.set(`rejected\u0000${r.reason}`, (tally.get(`rejected\u0000${r.reason}`) ?? 0) + 1);
    for (const r of batch.held) tally.set(`held\u0000${r._reason}`, (tally.get(`held\u0000${r._reason}`) ?? 0) + 1);
    const reasons = [...tally].sort((a, b) => b[1] - a[1]).map(([key, n]) => {
      const [kind, reason] = key.split("\u0000");
      return [t(kind === "held" ? "lab.review" : "lab.rejected"), t(`reason.${reason}`), String(n)];
    });
    const first = batch.rejections.slice(0, 20).map((r) => [String(r.record), r.field, t(`reason.${r.reason}`)]);
    report.replaceChildren(
      el("h2", {}, t("lab.report")),
      el("dl", { class: "facts", id: "counts" },
        el("dt", {}, t("lab.read")), el("dd", { id: "count-read" }, String(summary.read)),
        el("dt", {}, t("lab.accepted")), el("dd", { id: "count-accepted" }, String(summary.accepted)),
        el("dt", {}, t("lab.rejected")), el("dd", { id: "count-rejected" }, String(summary.rejected)),
        el("dt", {}, t("lab.review")), el("dd", { id: "count-review" }, String(summary.held_for_review))),
      batch.ignored.length ? el("p", { class: "hint" }, t("lab.ignored", { columns: batch.ignored.join(", ") })) : "",
      table("reasons", [t("col.outcome"), t("col.reason"), t("col.fields")], reasons, t("lab.noRejections")),
      first.length
        ? el("details", {}, el("summary", {}, t("lab.firstRejections", { n: first.length })),
          table("rejections", [t("col.record"), t("col.field"), t("col.reason")], first, ""))
        : "",
    );
  }

  const form = el("form", { id: "lab-form", on: { submit: run } },
    el("label", { for: "party-files" }, t("lab.partyFiles")), partyFiles,
    el("p", { class: "hint" }, t("files.local")),
    el("label", { for: "results-file" }, t("lab.results")), results,
    el("label", { for: "ttl" }, t("lab.ttl")), ttl,
    send);
  main.replaceChildren(el("h1", {}, t("lab.title")), el("p", {}, t("lab.intro")), form, report, sent);
}
