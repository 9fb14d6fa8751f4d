// One bundle for every page; the page's <body data-page> picks the view.
import { consolePage } from "./console.js";
import { enrolPage } from "./enrol.js";
import { inboxPage } from "./inbox.js";
import { labPage } from "./lab.js";
import { catalogue, lang, setLang, t } from "./i18n.js";
import { checkEnvelopeVector, checkManifest, checkPolicy, requireParty, runVectors } from "./selftest.js";
import { el, fail } from "./ui.js";

const PAGES = { console: consolePage, enrol: enrolPage, lab: labPage, inbox: inboxPage };
const NAV = [["/", "nav.console"], ["/lab", "nav.lab"], ["/inbox", "nav.inbox"], ["/enrol", "nav.enrol"]];

function chrome(page) {
  document.documentElement.lang = lang();
  document.title = `${t(`title.${page}`)} · labrelay`;
  const nav = document.getElementById("nav");
  nav.replaceChildren(el("ul", {}, NAV.map(([href, key]) => el("li", {}, el("a", {
    href, "aria-current": location.pathname === href ? "page" : undefined,
  }, t(key))))));
  const toggle = document.getElementById("lang");
  toggle.textContent = t("lang.switch");
  toggle.setAttribute("aria-label", t("lang.switchLabel"));
  toggle.onclick = () => {
    setLang(lang() === "fr" ? "en" : "fr");
    location.reload();
  };
}

async function start() {
  const page = document.body.dataset.page;
  chrome(page);
  const main = document.getElementById("main");
  try {
    await PAGES[page](main);
  } catch (err) {
    fail(err);
  }
}

// For scripts and the tests (tests/integration/test_web.py): the page's own checks, on given vectors.
globalThis.labrelay = Object.freeze({
  catalogue, checkEnvelopeVector, checkManifest, checkPolicy, requireParty, runVectors,
});

start();
