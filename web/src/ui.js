// Small DOM helpers: elements built with textContent only (never innerHTML), so nothing the relay or a file says
// can become markup; the status line is an ARIA live region.
import { t } from "./i18n.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function section(id, title, ...children) {
  return el("section", { id, "aria-labelledby": `${id}-title` }, el("h2", { id: `${id}-title` }, title), ...children);
}

export function table(id, headers, rows, empty) {
  if (!rows.length) return el("p", { id, class: "empty" }, empty);
  return el(
    "table",
    { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))),
  );
}

export function say(message, kind = "info") {
  const status = document.getElementById("status");
  status.className = `status ${kind}`;
  status.textContent = message;
}

export function fail(err) {
  console.error(err);
  say(explain(err), "error");
}

/** A one-line, translated explanation of an error: the relay's problem code, a trust failure, or a file error. */
export function explain(err) {
  if (err && err.translated) return err.message;
  if (err && err.problem && err.problem.code) {
    const key = `problem.${err.problem.code}`;
    const known = t(key);
    return known === key ? `${err.problem.title || err.problem.code}: ${err.problem.detail || ""}` : `${known} (${err.problem.detail || err.status})`;
  }
  if (err && err.code && err.party !== undefined) return t(`trust.${err.code}`, { party: err.party });
  if (err && err.kind && err.file) return t(`file.${err.kind}`, { file: err.file });
  if (err && err.name === "NotAllowedError") return t("passkey.cancelled");
  return `${t("error.unexpected")}: ${err && err.message ? err.message : err}`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function when(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(document.documentElement.lang === "en" ? "en-GB" : "fr-FR", {
    dateStyle: "short",
    timeStyle: "medium",
    timeZone: "UTC",
  }) + " UTC";
}

export function filesInput(id, labelText, { multiple = false, accept } = {}) {
  const input = el("input", { type: "file", id, multiple, accept });
  return [el("label", { for: id }, labelText), input];
}
