// The canonical lab-result record: its fields, their bounds, and the reasons a record can be refused.
// Mirrors src/labrelay/domain/records.py (the source of truth); the values here must stay identical to it
// (tests/vectors/web_validation.json and web/test/vectors.test.mjs check them).

/** The lab-results template, in its documented order (input order is free). Mirrors FIELDS. */
export const FIELDS = Object.freeze([
  "nir",
  "nom",
  "prenom",
  "date_naissance",
  "sexe",
  "adresse",
  "code_postal",
  "code_commune_insee",
  "commune",
  "telephone",
  "email",
  "prescripteur_rpps",
  "prescripteur_nom",
  "prescripteur_telephone",
  "laboratoire_finess",
  "date_prelevement",
  "date_validation",
  "code_loinc",
  "resultat",
]);

/** Fields labrelay computes for recipients. Mirrors DERIVED. */
export const DERIVED = Object.freeze(["pseudonyme", "age"]);

/** Mirrors ALL_OUTPUT_FIELDS. */
export const ALL_OUTPUT_FIELDS = Object.freeze(["pseudonyme", ...FIELDS, "age"]);

/** Fields that identify a person directly: never given to a pseudonymised recipient. Mirrors DIRECT_IDENTIFIERS. */
export const DIRECT_IDENTIFIERS = new Set(["nir", "nom", "prenom", "date_naissance", "adresse", "telephone", "email"]);

/** Mirrors REQUIRED. */
export const REQUIRED = new Set([
  "nir",
  "nom",
  "prenom",
  "date_naissance",
  "sexe",
  "code_commune_insee",
  "laboratoire_finess",
  "date_prelevement",
  "date_validation",
  "code_loinc",
  "resultat",
]);

/** Template columns a file may leave out: read as empty on every record. Mirrors OPTIONAL (FIELDS order). */
export const OPTIONAL = Object.freeze(FIELDS.filter((f) => !REQUIRED.has(f)));

/** Identity and address text refused when it begins like a spreadsheet formula (= + - @). Mirrors FORMULA_FIELDS. */
export const FORMULA_FIELDS = Object.freeze(["nom", "prenom", "adresse", "commune", "prescripteur_nom", "email"]);

/**
 * Characters refused in FORMULA_FIELDS (Reason.INVISIBLE): every format character of Unicode 14 (bidi marks,
 * embeddings, overrides, isolates, zero-width characters, the BOM, tags…), the C1 controls, the line and paragraph
 * separators. Listed, not looked up with \p{Cf}, so that every browser refuses what the CLI refuses. Mirrors
 * INVISIBLE_RANGES.
 */
export const INVISIBLE_RANGES = Object.freeze([
  [0x0080, 0x009f],
  [0x00ad, 0x00ad],
  [0x0600, 0x0605],
  [0x061c, 0x061c],
  [0x06dd, 0x06dd],
  [0x070f, 0x070f],
  [0x0890, 0x0891],
  [0x08e2, 0x08e2],
  [0x180e, 0x180e],
  [0x200b, 0x200f],
  [0x2028, 0x202e],
  [0x2060, 0x2064],
  [0x2066, 0x206f],
  [0xfeff, 0xfeff],
  [0xfff9, 0xfffb],
  [0x110bd, 0x110bd],
  [0x110cd, 0x110cd],
  [0x13430, 0x13438],
  [0x1bca0, 0x1bca3],
  [0x1d173, 0x1d17a],
  [0xe0001, 0xe0001],
  [0xe0020, 0xe007f],
]);

/** Upper bounds, in UTF-8 bytes, after trimming. Mirrors MAX_LENGTH. */
export const MAX_LENGTH = Object.freeze({
  nir: 15,
  nom: 200,
  prenom: 200,
  date_naissance: 10,
  sexe: 1,
  adresse: 300,
  code_postal: 5,
  code_commune_insee: 5,
  commune: 200,
  telephone: 20,
  email: 254,
  prescripteur_rpps: 11,
  prescripteur_nom: 240,
  prescripteur_telephone: 20,
  laboratoire_finess: 9,
  date_prelevement: 10,
  date_validation: 10,
  code_loinc: 10,
  resultat: 16,
});

/** A record longer than this per field is refused by the reader before anything else looks at it. Mirrors RAW_MAX. */
export const RAW_MAX = 512;

/** Mirrors the Result enum. */
export const Result = Object.freeze({ POSITIVE: "POSITIF", NEGATIVE: "NEGATIF", INDETERMINATE: "INDETERMINE" });

/** SNOMED CT result codes accepted on input. Mirrors SNOMED_RESULTS. */
export const SNOMED_RESULTS = Object.freeze({ 260373001: Result.POSITIVE, 260415000: Result.NEGATIVE });

/** SARS-CoV-2 LOINC codes of the domain reference; the set in force is the signed policy's. Mirrors DEFAULT_LOINC. */
export const DEFAULT_LOINC = Object.freeze([
  "94500-6",
  "94309-2",
  "94845-5",
  "94660-8",
  "94531-1",
  "94558-4",
  "95209-3",
  "94563-4",
  "94564-2",
  "94762-2",
]);

/** Why a record is refused or held: the same stable strings as the Python Reason enum (they appear in reports). */
export const Reason = Object.freeze({
  MISSING_FIELDS: "record has fewer fields than the header",
  EXTRA_FIELDS: "record has more fields than the header",
  MALFORMED: "record is not well-formed",
  CONTROL: "control character in field",
  FORMULA: "formula-like value",
  INVISIBLE: "invisible or direction-changing character",
  TOO_LONG: "field too long",
  REQUIRED: "required field is empty",
  NIR_FORMAT: "NIR: not 15 characters in the NIR layout",
  NIR_SEX: "NIR: sex digit must be 1 or 2",
  NIR_KEY: "NIR: key does not match",
  DATE_FORMAT: "date: not YYYY-MM-DD or DD/MM/YYYY",
  DATE_UNREAL: "date: no such day",
  DATE_RANGE: "date: before 1900",
  DATE_ORDER_BIRTH: "date: sample taken before birth",
  DATE_ORDER_VALIDATION: "date: validated before the sample was taken",
  DATE_FUTURE: "date: in the future",
  SEX: "sex: not M, F, H, 1 or 2",
  POSTAL_CODE: "postal code: not 5 digits",
  COMMUNE_FORMAT: "INSEE commune code: malformed",
  COMMUNE_UNKNOWN: "INSEE commune code: no such commune",
  PHONE: "phone number: not a French or international number",
  EMAIL: "e-mail: malformed",
  RPPS: "RPPS: not 11 digits",
  FINESS: "FINESS: not 9 characters",
  LOINC: "LOINC: not a SARS-CoV-2 test of this policy",
  RESULT: "result: not POSITIF, NEGATIF, INDETERMINE or a known SNOMED CT code",
  NO_REGION: "residence in a territory no ARS table covers",
  NO_RECIPIENT: "no enrolled recipient for this residence's region",
  STRUCTURE: "message structure",
});

/** Reasons that hold a valid record for human review instead of rejecting it. Mirrors REVIEW_REASONS. */
export const REVIEW_REASONS = new Set([Reason.NO_REGION, Reason.NO_RECIPIENT]);

const MARKS = /\p{M}/gu;
const NOT_ALNUM = /[^A-Z0-9]/g;

/**
 * An identity trait as the pseudonym sees it: upper case, no accents, no punctuation or spaces. Mirrors
 * records.normalise_trait and route.normalised_trait (NFKD, drop marks, upper case, keep A-Z and 0-9).
 */
export function normaliseTrait(text) {
  return text.normalize("NFKD").replace(MARKS, "").toUpperCase().replace(NOT_ALNUM, "");
}
