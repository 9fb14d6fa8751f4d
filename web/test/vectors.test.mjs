// Runs every vector of tests/vectors/web_validation.json (the Python CLI's own answers) through web/src and
// compares, with the same runner the browser test uses (web/src/vectors.js). Usage: node web/test/vectors.test.mjs [--verbose] [--bench N]
// Exits non-zero on any mismatch. --bench N also times reading and validating N synthetic records.

import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as records from "../src/records.js";
import { Validator, readCsv } from "../src/validate.js";
import { runAll } from "../src/vectors.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const vectors = JSON.parse(readFileSync(path.join(root, "tests", "vectors", "web_validation.json"), "utf8"));
const verbose = process.argv.includes("--verbose");

// ------------------------------------------------------------------ reference data (as labrelay/refdata.py reads it)

/** INSEE commune codes and the department → region table from src/labrelay/data. The page passes these in. */
function loadRefdata() {
  const dir = path.join(root, "src", "labrelay", "data");
  const table = (name, sep) => {
    const text = readFileSync(path.join(dir, name), "utf8");
    if (text.includes('"')) throw new Error(`${name} has quoted fields: this loader does not read them`);
    const [head, ...rows] = text.split(/\r?\n/).filter((l) => l !== "");
    const columns = head.split(sep);
    return rows.map((r) => Object.fromEntries(r.split(sep).map((v, i) => [columns[i], v])));
  };
  const communes = new Set(table("laposte_hexasmal.csv", ";").map((r) => r.Code_commune_INSEE));
  const departmentRegions = {};
  for (const r of table("departement2020.csv", ",")) {
    departmentRegions[/^[0-9]+$/.test(r.dep) ? r.dep.padStart(2, "0") : r.dep] = r.reg.padStart(2, "0");
  }
  return { communes, departmentRegions };
}

const { communes, departmentRegions } = loadRefdata();

// ------------------------------------------------------------------ a rough timing

function bench(n) {
  const good = {
    nir: "179037511104242",
    nom: "DUPONT",
    prenom: "Céline",
    date_naissance: "1979-03-15",
    sexe: "F",
    adresse: "12 rue de la Paix",
    code_postal: "75011",
    code_commune_insee: "75111",
    commune: "PARIS 11",
    telephone: "0612345678",
    email: "celine.dupont@example.fr",
    prescripteur_rpps: "10004087358",
    prescripteur_nom: "Paul DURAND",
    prescripteur_telephone: "0145678901",
    laboratoire_finess: "750712184",
    date_prelevement: "2026-01-10",
    date_validation: "2026-01-11",
    code_loinc: "94500-6",
    resultat: "POSITIF",
  };
  const line = records.FIELDS.map((f) => good[f]).join(",");
  const text = records.FIELDS.join(",") + "\n" + `${line}\n`.repeat(n);
  const bytes = new TextEncoder().encode(text);
  let t = performance.now();
  const read = readCsv(bytes);
  const tRead = performance.now() - t;
  t = performance.now();
  const validator = new Validator({ today: "2026-01-15", loinc: records.DEFAULT_LOINC, communes, departmentRegions });
  let accepted = 0;
  for (const b of read.batches) accepted += validator.validate(b.records, { padded: b.padded }).accepted.length;
  const tValidate = performance.now() - t;
  console.log(
    `bench: ${n} records (${(bytes.length / 1e6).toFixed(1)} MB, ${read.batches.length} blocks): ` +
      `read ${tRead.toFixed(0)} ms, validate ${tValidate.toFixed(0)} ms, ${accepted} accepted`,
  );
}

// ------------------------------------------------------------------ run

const { count, failures } = await runAll(vectors, { communes, departmentRegions });
for (const f of failures) console.log(`FAIL ${f}`);
if (verbose && !failures.length) console.log("every vector matches");

const at = process.argv.indexOf("--bench");
if (at !== -1) bench(Number(process.argv[at + 1] ?? 300000));

console.log(`\n${count - failures.length}/${count} vectors pass` + (failures.length ? `, ${failures.length} fail` : ""));
process.exit(failures.length ? 1 : 0);
