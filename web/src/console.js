// The console for operators, DPOs and auditors: metadata only. Sign-in with a passkey; every command (freeze,
// unfreeze, revoke, unlock) is approved by a fresh passkey assertion over the command itself.
import { relayError } from "./httpsig.js";
import { t, tn } from "./i18n.js";
import { bytes, el, fail, say, section, table, when } from "./ui.js";

async function api(path, body) {
  const init = body === undefined ? { cache: "no-store" } : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  };
  const response = await fetch(path, { credentials: "same-origin", ...init });
  if (!response.ok) throw await relayError(response);
  return response.status === 204 ? null : response.json();
}

async function assertion(options) {
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
  const credential = await navigator.credentials.get({ publicKey });
  return credential.toJSON();
}

export async function consolePage(main) {
  let me;
  try {
    me = await api("/console/api/me");
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signInView(main);
    throw err;
  }
  document.getElementById("who").textContent = t("console.signedInAs", { party: me.party, role: t(`role.${me.role}`) });
  await dashboard(main, me);
}

function signInView(main) {
  const button = el("button", { type: "button", id: "signin", class: "primary" }, t("console.signIn"));
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      say(t("passkey.touch"));
      const options = await api("/console/api/signin/options", {});
      const credential = await assertion(options);
      await api("/console/api/signin", { credential });
      location.reload();
    } catch (err) {
      fail(err);
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(
    el("h1", {}, t("console.title")),
    el("p", {}, t("console.intro")),
    button,
    el("p", {}, t("console.noPasskey"), " ", el("a", { href: "/enrol" }, t("nav.enrol"))),
  );
  button.focus();
}

async function dashboard(main, me) {
  const [data, directory] = await Promise.all([api("/console/api/overview"), api("/console/api/parties")]);
  const mayCommand = me.may_command;

  async function command(action, target, reason) {
    say(t("passkey.touchCommand", { action: t(`action.${action}`) }));
    const options = await api("/console/api/commands/options", { action, target, reason });
    const credential = await assertion(options);
    const result = await api("/console/api/commands", { credential });
    await dashboard(main, me); // the new state is on screen before the status says it is done
    say(t(result.changed ? "command.done" : "command.unchanged", { action: t(`action.${action}`) }), "ok");
  }

  const guarded = (fn) => async (event) => {
    event.target.disabled = true;
    try {
      await fn();
    } catch (err) {
      fail(err);
    } finally {
      event.target.disabled = false;
    }
  };

  // The relay's state and the kill switch
  const state = el("p", { id: "relay-state", class: data.frozen ? "badge frozen" : "badge open" },
    t(data.frozen ? "console.frozen" : "console.open"));
  const freeze = mayCommand
    ? el("button", {
        type: "button",
        id: data.frozen ? "unfreeze" : "freeze",
        class: data.frozen ? "primary" : "danger",
        on: { click: guarded(() => command(data.frozen ? "unfreeze" : "freeze", null, "console")) },
      }, t(data.frozen ? "console.unfreeze" : "console.freeze"))
    : el("p", { class: "hint" }, t("console.readOnly"));

  // Alerts
  const alerts = table(
    "alerts",
    [t("col.at"), t("col.rule"), t("col.subject"), t("col.count"), t("col.locked")],
    data.alerts.map((a) => [when(a.at), t(`rule.${a.rule}`), a.subject ?? "—", `${a.count ?? "?"} / ${a.threshold ?? "?"}`,
      a.locked ? t("yes") : t("no")]),
    t("console.noAlerts"),
  );

  // Transfers
  const transfers = table(
    "transfers",
    [t("col.transfer"), t("col.sender"), t("col.recipient"), t("col.state"), t("col.size"), t("col.records"),
      t("col.deadline"), t("col.receipt")],
    data.transfers.map((x) => [
      el("code", { title: x.id }, x.id.slice(0, 8)),
      x.sender,
      x.recipient,
      el("span", { class: `state ${x.state}${x.overdue ? " overdue" : ""}` },
        t(`state.${x.state}`) + (x.quarantined ? ` · ${t("state.quarantined")}` : "") + (x.overdue ? ` · ${t("state.overdue")}` : "")),
      bytes(x.size),
      x.records ?? "—",
      when(x.deadline),
      x.receipt ? `${t(`receipt.${x.receipt.status}`)} ${when(x.receipt.received_at)}` : "—",
    ]),
    t("console.noTransfers"),
  );

  // Batches: one send each (the manifests' batch_id, which the relay holds in clear): n of m delivered
  const outcomes = ["waiting", "refused", "expired", "held", "failed"];
  const batches = table(
    "batches",
    [t("col.batch"), t("col.sender"), t("col.created"), t("col.delivered"), t("col.rest")],
    (data.batches ?? []).map((b) => [
      el("code", { title: b.batch_id }, b.batch_id.slice(0, 8)),
      b.sender,
      when(b.created),
      el("span", { class: `state ${b.delivered === b.total ? "delivered" : "available"}` },
        t("batch.delivered", { n: b.delivered, m: b.total })),
      outcomes.filter((o) => b[o]).map((o) => `${b[o]} ${t(`outcome.${o}`)}`).join(", ") || "—",
    ]),
    t("console.noBatches"),
  );

  // Retention
  const retentionOut = el("div", { id: "retention-result" });
  const retention = [
    el("dl", { class: "facts" },
      el("dt", {}, t("retention.open")), el("dd", {}, String(data.retention.open)),
      el("dt", {}, t("retention.overdue")), el("dd", { id: "overdue" }, String(data.retention.overdue)),
      el("dt", {}, t("retention.next")), el("dd", {}, when(data.retention.next_deadline))),
    el("button", { type: "button", id: "retention-check", on: { click: guarded(async () => {
      say(t("retention.running"));
      const report = await api("/console/api/retention");
      retentionOut.replaceChildren(
        el("p", { class: report.ok ? "badge open" : "badge frozen" }, t(report.ok ? "retention.ok" : "retention.bad")),
        el("ul", {}, report.checks.map((c) => el("li", {}, `${c.ok ? "✓" : "✗"} ${c.detail}`))),
      );
      say(t(report.ok ? "retention.ok" : "retention.bad"), report.ok ? "ok" : "error");
    }) } }, t("retention.check")),
    retentionOut,
  ];

  // Audit chain
  const auditOut = el("div", { id: "audit-result" });
  const head = data.audit_head;
  const audit = [
    el("dl", { class: "facts" },
      el("dt", {}, t("audit.records")), el("dd", { id: "audit-seq" }, head ? String(head.seq) : "0"),
      el("dt", {}, t("audit.head")), el("dd", {}, head ? el("code", {}, head.hash.slice(0, 16)) : "—"),
      el("dt", {}, t("audit.signedAt")), el("dd", {}, head ? when(head.at) : "—")),
    el("button", { type: "button", id: "audit-verify", on: { click: guarded(async () => {
      say(t("audit.verifying"));
      const report = await api("/console/api/audit");
      auditOut.replaceChildren(
        el("p", { class: report.ok ? "badge open" : "badge frozen" },
          t(report.ok ? "audit.ok" : "audit.bad", { n: report.records })),
        report.ok ? "" : el("ul", {}, report.problems.map((p) => el("li", {}, `#${p.seq ?? "?"}: ${p.problem}`))),
      );
      say(t(report.ok ? "audit.ok" : "audit.bad", { n: report.records }), report.ok ? "ok" : "error");
    }) } }, t("audit.verify")),
    auditOut,
  ];

  // Parties: locks, revocation
  const locks = table(
    "locks",
    [t("col.party"), t("col.kind"), t("col.reason"), t("col.at"), ""],
    data.locks.map((l) => [l.name, t(`lock.${l.kind}`), l.reason, when(l.at),
      mayCommand && l.kind === "lock"
        ? el("button", { type: "button", class: "quiet", on: { click: guarded(() => command("unlock", l.name, "console")) } },
          t("console.unlock"))
        : ""]),
    t("console.noLocks"),
  );
  const target = el("input", { id: "revoke-party", name: "party", required: true, autocomplete: "off", pattern: "[a-z0-9][a-z0-9-]{1,62}" });
  const why = el("input", { id: "revoke-reason", name: "reason", required: true, maxlength: 40, value: "" });
  const revoke = mayCommand
    ? el("form", { id: "revoke-form", on: { submit: async (event) => {
        event.preventDefault();
        const submit = event.target.querySelector("button");
        submit.disabled = true;
        try {
          if (!confirm(t("console.revokeConfirm", { party: target.value }))) return;
          await command("revoke", target.value, why.value || "console");
        } catch (err) {
          fail(err);
        } finally {
          submit.disabled = false;
        }
      } } },
      el("label", { for: "revoke-party" }, t("console.revokeParty")), target,
      el("label", { for: "revoke-reason" }, t("console.revokeReason")), why,
      el("button", { type: "submit", class: "danger" }, t("console.revoke")))
    : "";

  // The directory: each party's standing and the kind of its age key. A classic (X25519) key is one a quantum
  // adversary who copies the relay today could open later: the party moves with `labrelay party rotate --pq`.
  const classic = directory.parties.filter((p) => p.key === "classic" && p.status === "active").length;
  const parties = table(
    "directory",
    [t("col.party"), t("col.role"), t("col.standing"), t("col.key")],
    directory.parties.map((p) => [
      p.name,
      t(`role.${p.role}`),
      t(`standing.${p.status}`),
      el("span", { class: `badge ${p.key}`, "data-key": p.key }, t(`key.${p.key}`)),
    ]),
    t("console.noParties"),
  );
  const classicNote = classic
    ? el("p", { class: "notice", id: "classic-keys" }, tn("console.classicKeys", classic))
    : "";

  const signout = el("button", { type: "button", id: "signout", class: "quiet", on: { click: guarded(async () => {
    await api("/console/api/signout", {});
    location.reload();
  }) } }, t("console.signOut"));

  main.replaceChildren(
    el("h1", {}, t("console.title")),
    el("div", { class: "row" }, state, freeze, signout),
    el("p", { class: "hint" }, t("console.quarantined", { n: data.quarantined }), " · ", t("console.asOf", { at: when(data.now) })),
    section("alerts-section", t("console.alerts"), alerts),
    section("batches-section", t("console.batches"), batches),
    section("transfers-section", t("console.transfers"), transfers),
    el("div", { class: "cols" }, section("retention-section", t("console.retention"), retention),
      section("audit-section", t("console.audit"), audit)),
    section("parties-section", t("console.parties"), locks, revoke),
    section("directory-section", t("console.directory"), classicNote, parties),
  );

}
