// Bind a passkey to a console party (admin, DPO, auditor). The request is signed with the party's own key, read
// from its files here and never uploaded: the relay learns that the holder of that key made this passkey.
import { t } from "./i18n.js";
import { signedFetcher } from "./httpsig.js";
import { loadParty } from "./party.js";
import { el, fail, say } from "./ui.js";

export async function enrolPage(main) {
  const files = el("input", { type: "file", id: "party-files", multiple: true });
  const button = el("button", { type: "submit", id: "register", class: "primary" }, t("enrol.register"));
  const done = el("div", { id: "enrol-result" });
  const form = el("form", { id: "enrol-form", on: { submit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const party = await loadParty(files.files);
      const signed = signedFetcher(party);
      say(t("passkey.touch"));
      const options = await (await signed("/v1/console/passkeys/options", { method: "POST", body: {} })).json();
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options);
      const credential = await navigator.credentials.create({ publicKey });
      await signed("/v1/console/passkeys", { method: "POST", body: { credential: credential.toJSON() } });
      done.replaceChildren(el("p", { class: "badge open" }, t("enrol.done", { party: party.name })),
        el("p", {}, el("a", { href: "/" }, t("enrol.signIn"))));
      say(t("enrol.done", { party: party.name }), "ok");
    } catch (err) {
      fail(err);
    } finally {
      button.disabled = false;
    }
  } } },
    el("label", { for: "party-files" }, t("enrol.files")), files,
    el("p", { class: "hint" }, t("files.local")),
    button);
  main.replaceChildren(el("h1", {}, t("enrol.title")), el("p", {}, t("enrol.intro")), form, done);
}
