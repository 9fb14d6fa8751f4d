// Reading and validating a lab-results CSV in the browser, with the same outcome per record as the Python CLI.
//
// Mirrors src/labrelay/batch/pipeline.py (check_kind, detect_format: what a file is, from its first bytes),
// src/labrelay/batch/csv_reader.py (CsvReader: header sniffing, blocks, the polars fast path and the csv
// module slow path) and src/labrelay/batch/validate.py (Validator: the rules, first broken rule per field, the
// normalisations). The CLI's reader takes a different path for a block depending on what polars accepts, and the
// two paths do not always agree on hostile input (quotes, carriage returns, over-long values); this module models
// both paths and the choice between them, so that each record gets the CLI's verdict, not merely a reasonable one.
// tests/vectors/web_validation.json holds the CLI's own answers; web/test/vectors.test.mjs checks this module
// against them.

import {
  FIELDS,
  FORMULA_FIELDS,
  INVISIBLE_RANGES,
  MAX_LENGTH,
  OPTIONAL,
  RAW_MAX,
  REQUIRED,
  Reason,
  Result,
  SNOMED_RESULTS,
} from "./records.js";

export const BLOCK_BYTES = 8 * 1024 * 1024; // csv_reader.BLOCK_BYTES
const MAX_CARRY = 4 * BLOCK_BYTES; // csv_reader.MAX_CARRY (fixed, whatever the block size)
const HEADER_LIMIT = 64 * 1024; // sniff() reads the header with readline(64 KiB)
const FIELD_LIMIT = 131072; // Python's csv.field_size_limit() default

const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;

/**
 * A file that is not a lab-results batch at all (labrelay.errors.NotResults, a usage error): a workbook, UTF-16
 * text, a PDF, an archive, a binary file (`kind`, in the CLI's words), or a CSV whose header does not carry the
 * template (`found`: the columns as written, `missing`: the required ones it lacks; `twice`: names given twice).
 * The message is the CLI's, word for word; the page says it in its own words from these fields.
 */
export class NotResultsError extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = "NotResults";
    this.code = "not-results";
    Object.assign(this, { kind: null, format: null, found: null, missing: null, twice: null, noHeader: null }, details);
  }
}

// ------------------------------------------------------------------ text helpers

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// Windows-1252 as the WHATWG Encoding standard defines it (what TextDecoder("windows-1252") gives in a browser):
// 0x80-0x9F from this table, the five bytes it leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) as the code point of
// the same value, every other byte as ISO-8859-1 does; csv_reader._decode_line reads them the same way (its
// "labrelay-whatwg-1252" error handler). Written out rather than asked of TextDecoder: Node.js 20's decodes
// windows-1252 as ISO-8859-1. The vectors hold the CLI's decoding of every byte (windows_1252) to check this table.
const CP1252_HIGH =
  "\u20ac\x81\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\x8d\u017d\x8f" +
  "\x90\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\x9d\u017e\u0178";

/** Bytes decoded as Windows-1252 (WHATWG). */
export function decodeWindows1252(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    const chunk = bytes.subarray(i, i + 8192);
    const units = new Array(chunk.length);
    for (let k = 0; k < chunk.length; k++) {
      const b = chunk[k];
      units[k] = b >= 0x80 && b < 0xa0 ? CP1252_HIGH.charCodeAt(b - 0x80) : b;
    }
    out += String.fromCharCode.apply(null, units);
  }
  return out;
}

function decodeUtf8(bytes) {
  try {
    return UTF8.decode(bytes);
  } catch {
    return null;
  }
}

/** csv_reader.to_utf8, as text: the block decoded as UTF-8, else line by line (UTF-8, else Windows-1252). */
function toText(block) {
  const whole = decodeUtf8(block);
  if (whole !== null) return whole;
  const parts = [];
  let start = 0;
  for (;;) {
    const nl = block.indexOf(LF, start);
    const line = block.subarray(start, nl === -1 ? block.length : nl);
    parts.push(decodeUtf8(line) ?? decodeWindows1252(line));
    if (nl === -1) break;
    start = nl + 1;
  }
  return parts.join("\n");
}

/** Length in UTF-8 bytes (polars str.len_bytes). */
export function utf8Length(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 2; // a surrogate pair: 2 units, 4 bytes
      i++;
    } else n += 2;
  }
  return n;
}

/** Length in code points (Python len). */
function codePoints(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

// Python str.strip(): the characters str.isspace() accepts.
const PY_SPACE = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const PY_STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, "g");

// ------------------------------------------------------------------ Python's csv module (the slow path)

const START_RECORD = 0;
const START_FIELD = 1;
const IN_FIELD = 2;
const IN_QUOTED_FIELD = 3;
const QUOTE_IN_QUOTED_FIELD = 4;
const EAT_CRNL = 5;

/**
 * Python's csv.reader (Modules/_csv.c: parse_process_char and Reader_iternext), default dialect apart from the
 * delimiter: quotechar '"', doublequote, no escape character, no initial-space skipping. Yields {row} or {error}
 * (a csv.Error: the record is lost, with the rest of the line it broke on).
 */
function* pyCsvRows(lines, delimiter, strict) {
  const delim = delimiter.charCodeAt(0);
  const iter = lines[Symbol.iterator]();
  for (;;) {
    let fields = [];
    let field = "";
    let state = START_RECORD;
    let error = null;
    const save = () => {
      fields.push(field);
      field = "";
    };
    const add = (text) => {
      field += text;
      if (field.length > FIELD_LIMIT && codePoints(field) > FIELD_LIMIT) {
        error = `field larger than field limit (${FIELD_LIMIT})`;
      }
    };
    do {
      const next = iter.next();
      if (next.done) {
        if (field.length !== 0 || state === IN_QUOTED_FIELD) {
          if (strict) {
            yield { error: "unexpected end of data" };
            return;
          }
          save();
          break;
        }
        return;
      }
      const line = next.value;
      const n = line.length;
      let i = 0;
      while (i < n && error === null) {
        const c = line.charCodeAt(i);
        switch (state) {
          case START_RECORD:
            if (c === LF || c === CR) {
              state = EAT_CRNL;
              i++;
            } else {
              state = START_FIELD;
            }
            break;
          case START_FIELD:
            if (c === LF || c === CR) {
              save();
              state = EAT_CRNL;
              i++;
            } else if (c === QUOTE) {
              state = IN_QUOTED_FIELD;
              i++;
            } else if (c === delim) {
              save();
              i++;
            } else {
              state = IN_FIELD; // the character is taken below, as part of the field
            }
            break;
          case IN_FIELD: {
            let j = i;
            while (j < n) {
              const d = line.charCodeAt(j);
              if (d === LF || d === CR || d === delim) break;
              j++;
            }
            if (j > i) {
              add(line.slice(i, j));
              i = j;
            } else {
              save();
              state = c === delim ? START_FIELD : EAT_CRNL;
              i++;
            }
            break;
          }
          case IN_QUOTED_FIELD: {
            const j = line.indexOf('"', i);
            const end = j === -1 ? n : j;
            if (end > i) {
              add(line.slice(i, end));
              i = end;
            } else {
              state = QUOTE_IN_QUOTED_FIELD;
              i++;
            }
            break;
          }
          case QUOTE_IN_QUOTED_FIELD:
            if (c === QUOTE) {
              add('"');
              state = IN_QUOTED_FIELD;
            } else if (c === delim) {
              save();
              state = START_FIELD;
            } else if (c === LF || c === CR) {
              save();
              state = EAT_CRNL;
            } else if (!strict) {
              add(line[i]);
              state = IN_FIELD;
            } else {
              error = `'${delimiter}' expected after '"'`;
            }
            i++;
            break;
          case EAT_CRNL:
            if (c === LF || c === CR) {
              i++;
            } else {
              error = "new-line character seen in unquoted field - do you need to open the file in universal-newline mode?";
            }
            break;
        }
      }
      if (error !== null) break;
      // the end of the line (EOL)
      if (state === START_FIELD || state === IN_FIELD || state === QUOTE_IN_QUOTED_FIELD) {
        save();
        state = START_RECORD;
      } else if (state === EAT_CRNL) {
        state = START_RECORD;
      }
    } while (state !== START_RECORD);
    if (error !== null) {
      yield { error };
      continue;
    }
    yield { row: fields };
  }
}

/** The lines io.StringIO(text, newline="") yields: each ends after \n, \r\n or a lone \r. */
function* pyLines(text) {
  const n = text.length;
  const eol = /[\r\n]/g;
  let i = 0;
  while (i < n) {
    eol.lastIndex = i;
    const m = eol.exec(text);
    let j;
    if (m === null) j = n;
    else if (text.charCodeAt(m.index) === CR && text.charCodeAt(m.index + 1) === LF) j = m.index + 2;
    else j = m.index + 1;
    yield text.slice(i, j);
    i = j;
  }
}

// ------------------------------------------------------------------ what the file is: pipeline.check_kind

const HEAD_BYTES = 4096; // pipeline._head
const startsWith = (bytes, prefix) => prefix.length <= bytes.length && prefix.every((b, i) => bytes[i] === b);
const ascii = (text) => Array.from(text, (c) => c.charCodeAt(0));
const contains = (bytes, text) => {
  const needle = ascii(text);
  outer: for (let i = 0; i + needle.length <= bytes.length; i++) {
    for (let k = 0; k < needle.length; k++) if (bytes[i + k] !== needle[k]) continue outer;
    return true;
  }
  return false;
};
const SIGNATURES = [
  // pipeline._SIGNATURES: [first bytes, what the file is]
  [[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1], "an Excel 97-2003 workbook (.xls) or an old Office document"],
  [[0xff, 0xfe], "UTF-16 text"],
  [[0xfe, 0xff], "UTF-16 text"],
  [ascii("%PDF"), "a PDF document"],
  [[0x1f, 0x8b], "a gzip-compressed file"],
  [ascii("age-encryption.org/"), "an age-encrypted file"],
];

/** pipeline._kind_of: what a file certainly not of results is (the CLI's words), from its first bytes; or null. */
export function kindOf(head) {
  if (startsWith(head, [0x50, 0x4b, 0x03, 0x04])) {
    if (contains(head, "opendocument.spreadsheet")) return "an OpenDocument spreadsheet (.ods)";
    if (contains(head, "xl/") || (contains(head, "[Content_Types].xml") && !contains(head, "word/"))) {
      return "an Excel workbook (.xlsx)";
    }
    return "a ZIP archive (or an Office document)";
  }
  for (const [prefix, kind] of SIGNATURES) if (startsWith(head, prefix)) return kind;
  if (head.length >= 8) {
    let even = 0;
    let odd = 0;
    for (let i = 0; i < head.length; i++) if (head[i] === 0) i % 2 ? odd++ : even++;
    if (Math.max(even, odd) > Math.floor(head.length / 4)) return "UTF-16 text";
  }
  // pipeline._TEXT_BYTES: more than one byte in 16 a control character text never holds (all but tab, LF, VT, FF,
  // CR); one bad record's NUL is that record's problem
  let controls = 0;
  for (const byte of head) if (byte < 0x09 || (byte >= 0x0e && byte < 0x20) || byte === 0x7f) controls++;
  if (controls * 16 > head.length) return "a binary file";
  return null;
}

/** pipeline.check_kind: refuses a workbook, UTF-16 text, a PDF, an archive or any binary file, saying what it is. */
export function checkKind(bytes, name = "file") {
  const kind = kindOf(bytes.subarray(0, HEAD_BYTES));
  if (kind !== null) throw new NotResultsError(`${name} is ${kind}, not a lab-results file`, { kind });
}

const BOM_BYTES = new Set([0xef, 0xbb, 0xbf]);
const ASCII_SPACE = new Set([0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c]);

/** pipeline.detect_format: "csv", "hl7" or "fhir" from the first bytes, after check_kind. */
export function detectFormat(bytes, name = "file") {
  checkKind(bytes, name);
  const head = bytes.subarray(0, HEAD_BYTES);
  let i = 0;
  while (i < head.length && BOM_BYTES.has(head[i])) i++; // bytes.lstrip(b"\xef\xbb\xbf"): any of the three
  while (i < head.length && ASCII_SPACE.has(head[i])) i++;
  const rest = head.subarray(i);
  if (["MSH", "FHS", "BHS"].some((tag) => startsWith(rest, ascii(tag)))) return "hl7";
  if (rest[0] === 0x7b) return "fhir";
  return "csv";
}

// ------------------------------------------------------------------ header: csv_reader.sniff

/** Python's order for strings: by code point (JavaScript's default sort compares UTF-16 units). */
function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

const SPACE_OR_TAB = /^[ \t]+|[ \t]+$/g;

/** csv_reader.header_name: a header cell as matched against the template (BOM, spaces, tabs, one pair of quotes
 * around it and case do not count). */
export function headerName(text) {
  let name = (text.startsWith("\ufeff") ? text.slice(1) : text).replace(SPACE_OR_TAB, "");
  if (name.length >= 2 && name[0] === '"' && name[name.length - 1] === '"') {
    name = name.slice(1, -1).replace(SPACE_OR_TAB, "");
  }
  return name.toLowerCase();
}

/** csv_reader._shown: names for a message, "" for an empty one, the first 30 and how many in all. */
function shown(names, limit = 30) {
  const text = names.slice(0, limit).map((n) => (n ? n : '""')).join(", ");
  return text + (names.length > limit ? `, … (${names.length} in all)` : "");
}

function sniff(bytes, name) {
  const nl = bytes.indexOf(LF);
  const headLength = nl !== -1 && nl < HEADER_LIMIT ? nl + 1 : Math.min(bytes.length, HEADER_LIMIT);
  const head = bytes.subarray(0, headLength);
  const bom = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf;
  const text = toText(bom ? head.subarray(3) : head).replace(/[\r\n]+$/, "");
  if (!text.replace(PY_STRIP, "")) throw new NotResultsError(`${name} is empty or has no header line`);
  const count = (ch) => text.split(ch).length - 1;
  const separator = count(";") > count(",") ? ";" : ",";
  const first = pyCsvRows([text], separator, false).next();
  if (first.done || first.value.error) {
    const why = first.done ? "" : first.value.error;
    throw new NotResultsError(`${name} has no readable CSV header (${why})`);
  }
  const written = first.value.row;
  // An empty header cell (a trailing separator) names no template field: an ignored column of its own.
  const columns = written.map((c, i) => headerName(c) || `(column ${i + 1})`);
  if (!columns.some((c) => FIELDS.includes(c))) {
    // Not a header: most likely a record (the header line left out); its values are not repeated.
    throw new NotResultsError(
      `${name} is not in the lab-results template: its first line names none of the template's columns ` +
        `(${written.length} fields, not shown: it may be a record; is the header line missing?); ` +
        `expected: ${FIELDS.join(", ")}`,
      { noHeader: written.length },
    );
  }
  const twice = [...new Set(columns.filter((c, i) => columns.indexOf(c) !== i))].sort(byCodePoint);
  if (twice.length) {
    throw new NotResultsError(`${name}: the header names a column twice (${shown(twice)})`, { twice });
  }
  const missing = FIELDS.filter((f) => REQUIRED.has(f) && !columns.includes(f));
  const asWritten = written.map((c) => c.replace(PY_STRIP, ""));
  if (missing.length) {
    throw new NotResultsError(
      `${name} is not in the lab-results template: columns found: ${shown(asWritten)}; ` +
        `expected: ${FIELDS.join(", ")}; missing: ${missing.join(", ")}`,
      { found: asWritten, missing },
    );
  }
  const known = new Set(FIELDS);
  return {
    separator,
    columns,
    ignored: asWritten.filter((_, i) => !known.has(columns[i])),
    missing: OPTIONAL.filter((f) => !columns.includes(f)),
    bom,
    headLength,
  };
}

// ------------------------------------------------------------------ blocks: csv_reader._blocks

/** Byte ranges of the body, each ending at a record boundary, exactly as the CLI cuts them. */
function* blocks(bytes, start, blockBytes) {
  const capacity = blockBytes + MAX_CARRY;
  let base = start; // where the reader's buffer starts in the file
  let filled = 0;
  for (;;) {
    const got = Math.max(0, Math.min(blockBytes, bytes.length - (base + filled)));
    filled += got;
    if (!got) {
      if (filled) yield bytes.subarray(base, base + filled);
      return;
    }
    const end = base + filled;
    const lastNewline = (from, to) => {
      // buf.rfind(b"\n", 0, to): the last newline in [from, to)
      if (to <= from) return -1;
      const at = bytes.lastIndexOf(LF, to - 1);
      return at >= from ? at : -1;
    };
    let cut = lastNewline(base, end);
    if (cut !== -1 && bytes.subarray(base, end).includes(QUOTE)) {
      // a newline inside a quoted field is not a boundary: step back while the quotes before it are unpaired
      let quotes = 0;
      for (let i = base; i < cut; i++) if (bytes[i] === QUOTE) quotes++;
      while (cut !== -1 && quotes % 2) {
        const previous = lastNewline(base, cut);
        for (let i = previous === -1 ? base : previous; i < cut; i++) if (bytes[i] === QUOTE) quotes--;
        cut = previous;
      }
    }
    if (cut === -1 && filled > MAX_CARRY) cut = lastNewline(base, end);
    if (cut === -1) {
      if (filled + blockBytes > capacity) {
        yield bytes.subarray(base, end);
        base = end;
        filled = 0;
      }
      continue;
    }
    yield bytes.subarray(base, cut + 1);
    filled = end - (cut + 1);
    base = cut + 1;
  }
}

// ------------------------------------------------------------------ fast path: what polars makes of a block

const QUOTED = /"(?:[^"]|"")*"/g; // csv_reader._QUOTED
const LINE_CONTROL = /[\x00-\x0c\x0e-\x1f\x7f]|\r[^\n]/; // csv_reader.LINE_CONTROL (Rust's "." is any but \n)
const CONTROL_BYTE = /[\x00-\x0c\x0e-\x1f\x7f]/;
const LONE_CR = /\r[^\n]/;

const LANE = 64; // polars' SIMD lane, in bytes

/** UTF-8 width of the character at i (a surrogate pair counts once, 4 bytes, at its first unit). */
function widthAt(t, i) {
  const c = t.charCodeAt(i);
  if (c < 0x80) return 1;
  if (c < 0x800) return 2;
  if (c >= 0xd800 && c <= 0xdbff) return 4;
  if (c >= 0xdc00 && c <= 0xdfff) return 0;
  return 3;
}

/**
 * polars' SplitFields (splitfields.rs, the SIMD build) over text[v, end): the fields of one record, read from a
 * stream that goes on past the end of the line. A field that starts with a quote runs to the first separator or
 * newline outside quotes, every quote toggling; when more than 64 bytes remain, that search runs over 64-byte
 * lanes, and the other unquoted ends found in the same lane are cached and used for the next fields as they are
 * (so those fields are split as if quotes toggled anywhere). next() returns [start, end], the field being
 * text[start, end), or null once the record has ended.
 */
class PolarsFields {
  constructor(text, start, end, sep) {
    this.t = text;
    this.v = start;
    this.end = end;
    this.sep = sep.charCodeAt(0);
    this.cache = [];
    this.finished = false;
  }

  remainingOver(at, bytes) {
    // more than `bytes` UTF-8 bytes in t[at, end)?
    if (this.end - at > bytes) return true;
    return utf8Length(this.t.slice(at, this.end)) > bytes;
  }

  next() {
    if (this.finished) return null;
    const t = this.t;
    const v = this.v;
    if (this.cache.length) {
      const pos = this.cache.shift();
      if (t.charCodeAt(pos) === LF) return this.finish(v, pos);
      this.v = pos + 1;
      return [v, pos];
    }
    if (v >= this.end) return this.finish(v, v);
    if (t.charCodeAt(v) !== QUOTE) {
      for (let j = v; j < this.end; j++) {
        const c = t.charCodeAt(j);
        if (c === LF) return this.finish(v, j);
        if (c === this.sep) {
          this.v = j + 1;
          return [v, j];
        }
      }
      return this.finish(v, this.end);
    }
    let j = v;
    let inQuote = false;
    while (this.remainingOver(j, LANE)) {
      // one lane: the 64 bytes from j
      const ends = [];
      let bytes = 0;
      while (bytes < LANE) {
        const c = t.charCodeAt(j);
        if (c === QUOTE) inQuote = !inQuote;
        else if (!inQuote && (c === this.sep || c === LF)) ends.push(j);
        bytes += widthAt(t, j);
        j += 1;
        if (widthAt(t, j) === 0) j += 1; // the second unit of a surrogate pair
      }
      if (ends.length) {
        const pos = ends.shift();
        if (t.charCodeAt(pos) === LF) return this.finish(v, pos);
        this.cache = ends;
        this.v = pos + 1;
        return [v, pos];
      }
    }
    for (; j < this.end; j++) {
      const c = t.charCodeAt(j);
      if (c === QUOTE) inQuote = !inQuote;
      else if (!inQuote && c === LF) return this.finish(v, j);
      else if (!inQuote && c === this.sep) {
        this.v = j + 1;
        return [v, j];
      }
    }
    return this.finish(v, this.end);
  }

  finish(start, end) {
    this.finished = true;
    return [start, end];
  }
}

/** parser.find_quoted: the first newline outside quotes from i (every quote toggles), or -1. */
function findQuoted(t, i, end) {
  let inQuote = false;
  for (; i < end; i++) {
    const c = t.charCodeAt(i);
    if (c === QUOTE) inQuote = !inQuote;
    if (!inQuote && c === LF) return i;
  }
  return -1;
}

/**
 * parser.parse_lines: the records polars reads from body (quoting on), each as the header's number of values, or
 * null where polars fails (a quoted field not closed by a quote). Fields past the header's are skipped up to the
 * next newline outside quotes; short records are padded with empty strings.
 */
function polarsRecords(body, sep, expected) {
  const rows = [];
  const n = body.length;
  let p = 0;
  while (p < n) {
    const it = new PolarsFields(body, p, n, sep);
    const values = [];
    let next = n;
    for (;;) {
      const f = it.next();
      if (f === null) break;
      const value = polarsValue(body.slice(f[0], f[1]));
      if (value === null) return null;
      values.push(value);
      next = Math.min(f[1] + 1, n);
      if (values.length === expected) {
        if (body.charCodeAt(f[1]) !== LF) {
          const nl = f[1] < n ? findQuoted(body, f[1], n) : -1;
          next = nl === -1 ? n : nl + 1;
        }
        break;
      }
    }
    while (values.length < expected) values.push("");
    rows.push(values);
    p = next;
  }
  return rows;
}

/** How many fields polars finds in the first line (schema inference: the line alone, one trailing \r dropped). */
function firstLineFields(line, sep) {
  if (line.length > 1 && line.charCodeAt(line.length - 1) === CR) line = line.slice(0, -1);
  const it = new PolarsFields(line, 0, line.length, sep);
  let count = 0;
  while (it.next() !== null) count++;
  return count;
}

/** polars' string field: one trailing \r dropped; a field that starts with a quote must end with one. */
function polarsValue(field) {
  if (field.charCodeAt(field.length - 1) === CR) field = field.slice(0, -1);
  if (field.charCodeAt(0) !== QUOTE) return field;
  if (field.length < 2 || field.charCodeAt(field.length - 1) !== QUOTE) return null; // "not properly escaped"
  // escape_field: a pair of quotes is one quote; a lone quote is dropped
  const inner = field.slice(1, -1);
  if (!inner.includes('"')) return inner;
  let out = "";
  let previousQuote = false;
  for (const c of inner) {
    if (c === '"') {
      if (previousQuote) out += c;
      previousQuote = !previousQuote;
    } else {
      previousQuote = false;
      out += c;
    }
  }
  return out;
}

/**
 * CsvReader._fast: the block as polars reads it, or null where polars refuses it (the CLI then reads the block
 * with the csv module). Two reads are modelled: the block as lines (no quoting, one trailing \r dropped), and the
 * block as a frame (quoting, ragged lines padded or truncated, the first line's field count must match the header).
 */
function fastBatch(text, layout, offset) {
  const sep = layout.separator;
  const expected = layout.columns.length;
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text; // polars skips a BOM at the start
  if (body.length === 0) return null;
  if (body.includes("\x1f")) return null; // the lines read (separator \x1f) finds a second field in a line
  const quoted = body.includes('"');
  let rows = null;
  if (quoted) {
    // a line with an odd number of quotes: a quoted field spans lines, the csv module pairs them up
    let lineCount = 0;
    let q = body.indexOf('"');
    for (let start = 0; start < body.length; lineCount++) {
      let nl = body.indexOf("\n", start);
      if (nl === -1) nl = body.length;
      let quotes = 0;
      for (; q !== -1 && q < nl; q = body.indexOf('"', q + 1)) quotes++;
      if (quotes % 2) return null;
      if (start === 0 && firstLineFields(body.slice(0, nl), sep) !== expected) return null; // new_columns
      start = nl + 1;
    }
    rows = polarsRecords(body, sep, expected);
    // fewer records than lines: polars read a newline as data ("CSV malformed")
    if (rows === null || rows.length !== lineCount) return null;
  }
  const control = CONTROL_BYTE.test(body) || LONE_CR.test(body); // no line can match if the block does not
  const index = columnIndex(layout);
  const scratch = new Array(FIELDS.length);
  const records = [];
  const rejected = [];
  let record = offset;
  let padded = quoted;
  for (let start = 0, i = 0; start < body.length; i++) {
    let nl = body.indexOf("\n", start);
    if (nl === -1) nl = body.length;
    const raw = body.slice(start, nl);
    start = nl + 1;
    let fields = null;
    if (!quoted) {
      fields = raw.split(sep);
      if (i === 0 && fields.length !== expected) return null; // polars: new_columns do not match the file
    }
    // the line as polars' lines read has it: one trailing \r dropped
    const line = raw.charCodeAt(raw.length - 1) === CR ? raw.slice(0, -1) : raw;
    if (line.length === 0 || line === "\r") continue; // a blank line is not a record
    record++;
    const ascii = !NON_ASCII.test(line);
    const length = ascii ? line.length : utf8Length(line);
    let count;
    if (quoted) {
      count = occurrences(line.replace(QUOTED, ""), sep) + 1;
    } else {
      // a record has all its fields exactly when its line is as long as its fields plus the separators
      // (parsed: the bytes of the values polars keeps, the first `expected` fields less one trailing \r each)
      const kept = Math.min(expected, fields.length);
      let parsed = length + (raw.length - line.length) - (kept - 1);
      if (fields.length > expected) {
        let cut = expected - 1;
        for (let k = 0; k < expected; k++) cut += fields[k].length;
        const tail = raw.slice(cut); // the separator after the last field kept, and the fields polars drops
        parsed -= ascii ? tail.length : utf8Length(tail);
      }
      for (let k = 0; k < kept; k++) if (fields[k].charCodeAt(fields[k].length - 1) === CR) parsed--;
      const crlf = line.charCodeAt(line.length - 1) === CR ? 1 : 0;
      count = length === parsed + (expected - 1) + crlf ? expected : -1;
      if (!padded) {
        padded =
          line.includes(` ${sep}`) ||
          line.includes(`${sep} `) ||
          line.startsWith(" ") ||
          line.endsWith(" ") ||
          line.endsWith(" \r");
      }
    }
    if (count !== expected || length > RAW_MAX * expected) {
      const counted = quoted ? count : occurrences(line, sep) + 1;
      const reason =
        counted === expected ? Reason.TOO_LONG : counted < expected ? Reason.MISSING_FIELDS : Reason.EXTRA_FIELDS;
      rejected.push({ record, field: "*", reason });
      continue;
    }
    const values = quoted ? rows[i] : fields;
    for (let k = 0; k < FIELDS.length; k++) {
      const c = index[k]; // -1: an optional column the file leaves out, read as empty
      const f = c !== -1 && c < values.length ? values[c] : "";
      scratch[k] = !quoted && f.charCodeAt(f.length - 1) === CR ? f.slice(0, -1) : f; // polars drops one \r
    }
    records.push(recordOf(scratch, record, control && LINE_CONTROL.test(line)));
  }
  return { records, rejected, read: record - offset, padded };
}

const NON_ASCII = /[^\x00-\x7f]/;

function occurrences(s, ch) {
  let n = 0;
  for (let i = s.indexOf(ch); i !== -1; i = s.indexOf(ch, i + 1)) n++;
  return n;
}

// ------------------------------------------------------------------ slow path: CsvReader._slow

function slowBatch(text, layout, offset) {
  const expected = layout.columns.length;
  const index = columnIndex(layout);
  const scratch = new Array(FIELDS.length);
  const records = [];
  const rejected = [];
  let record = offset;
  for (const item of pyCsvRows(pyLines(text), layout.separator, true)) {
    if (item.error !== undefined) {
      record++;
      const reason = item.error.includes("NUL") ? Reason.CONTROL : Reason.MALFORMED;
      rejected.push({ record, field: "*", reason });
      continue;
    }
    const row = item.row;
    if (row.length === 0) continue; // a blank line is not a record
    record++;
    if (row.length !== expected) {
      const reason = row.length < expected ? Reason.MISSING_FIELDS : Reason.EXTRA_FIELDS;
      rejected.push({ record, field: "*", reason });
    } else if (row.some((v) => v.length > RAW_MAX && codePoints(v) > RAW_MAX)) {
      rejected.push({ record, field: "*", reason: Reason.TOO_LONG });
    } else {
      for (let k = 0; k < FIELDS.length; k++) scratch[k] = index[k] === -1 ? "" : row[index[k]];
      records.push(recordOf(scratch, record)); // no _control: the validator computes it
    }
  }
  return { records, rejected, read: record - offset, padded: true };
}

function columnIndex(layout) {
  return FIELDS.map((f) => layout.columns.indexOf(f));
}

/** A record read: _record, the template fields (values in FIELDS order), and _control when the reader knows it. */
function recordOf(v, record, control = undefined) {
  const rec = {
    _record: record,
    nir: v[0],
    nom: v[1],
    prenom: v[2],
    date_naissance: v[3],
    sexe: v[4],
    adresse: v[5],
    code_postal: v[6],
    code_commune_insee: v[7],
    commune: v[8],
    telephone: v[9],
    email: v[10],
    prescripteur_rpps: v[11],
    prescripteur_nom: v[12],
    prescripteur_telephone: v[13],
    laboratoire_finess: v[14],
    date_prelevement: v[15],
    date_validation: v[16],
    code_loinc: v[17],
    resultat: v[18],
  };
  if (control !== undefined) rec._control = control;
  return rec;
}
if (Object.keys(recordOf(FIELDS, 0)).slice(1).join() !== FIELDS.join()) throw new Error("recordOf must list FIELDS");

// ------------------------------------------------------------------ the reader

/**
 * Read a lab-results CSV file (its bytes) as the CLI's CsvReader does.
 *
 * Returns {records, rejected, read, ignored, missing, separator, columns, bom, batches}: records carry the
 * template fields as strings (an optional column the file leaves out, named in `missing`, is empty), "_record" (1-based, header excluded) and, when the CLI knows it from the line, "_control";
 * rejected lists the structural rejections {record, field: "*", reason}. batches are the CLI's blocks
 * ({records, rejected, read, padded}), for callers that validate block by block as the CLI does.
 * Throws NotResultsError for a file whose header does not carry the template. It does not look at what the file
 * is: call detectFormat first, as pipeline.open_reader does. Options: name (used in messages), blockBytes.
 */
export function readCsv(bytes, { name = "file", blockBytes = BLOCK_BYTES } = {}) {
  const layout = sniff(bytes, name);
  const batches = [];
  let seen = 0;
  for (const block of blocks(bytes, layout.headLength, blockBytes)) {
    // polars refuses a block that is not UTF-8: the CLI converts it line by line and tries polars again
    const text = toText(block);
    const batch = fastBatch(text, layout, seen) ?? slowBatch(text, layout, seen);
    seen += batch.read;
    batches.push(batch);
  }
  return {
    records: batches.flatMap((b) => b.records),
    rejected: batches.flatMap((b) => b.rejected),
    read: seen,
    ignored: layout.ignored,
    missing: layout.missing,
    separator: layout.separator,
    columns: layout.columns,
    bom: layout.bom,
    batches,
  };
}

// ------------------------------------------------------------------ validation: validate.Validator

const CONTROL = /[\x00-\x1f\x7f]/; // validate.CONTROL
const NIR_SHAPE = /^(?:[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8})$/;
const NIR = /^(?:[12][0-9]{2}(?:0[1-9]|1[0-2]|[2-9][0-9])(?:0[1-9]|[1-8][0-9]|9[0-5]|2[AB]|9[789])[0-9]{8})$/;
const DATE = /^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}\/[0-9]{2}\/[0-9]{4})$/;
const PHONE = /^(?:0[1-9][0-9]{8}|\+[1-9][0-9]{7,14})$/;
// Rust's \s is Unicode White_Space (not quite JavaScript's: it has U+0085, and not U+FEFF)
const RUST_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const EMAIL = new RegExp(`^(?:[^@${RUST_SPACE}]{1,64}@[^@${RUST_SPACE}]+\\.[^@${RUST_SPACE}]+)$`, "u");
const POSTAL = /^(?:[0-9]{5})$/;
const COMMUNE_CODE = /^(?:[0-9]{5}|2[AB][0-9]{3})$/;
const FINESS = /^(?:[0-9]{9}|2[AB][0-9]{7})$/;
const RPPS = /^(?:[0-9]{11})$/;
const LOWER_ASCII = /[a-z]/;
const PHONE_SEPARATORS = /[ .-]/g;
const LEADING_SPACE = new RegExp(`^[${RUST_SPACE}]+`);
const MIN_DATE = 19000101;
const FORMULA = new Set(FORMULA_FIELDS);
const FORMULA_START = /^[=+\-@\t\r]/; // validate._FORMULA, on the trimmed value
// validate._INVISIBLE: a bidi override, a zero-width character, a C1 control… anywhere in the value
const INVISIBLE = new RegExp(
  `[${INVISIBLE_RANGES.map(([lo, hi]) => `\\u{${lo.toString(16)}}-\\u{${hi.toString(16)}}`).join("")}]`,
  "u",
);

const DATE_FIELDS = ["date_naissance", "date_prelevement", "date_validation"];
const PHONE_FIELDS = new Set(["telephone", "prescripteur_telephone"]);
const UPPER_FIELDS = ["nir", "code_commune_insee", "laboratoire_finess", "sexe"];
const SEX_CODES = new Map([
  ["M", "M"],
  ["F", "F"],
  ["H", "M"],
  ["1", "M"],
  ["2", "F"],
]);
const F = Object.fromEntries(FIELDS.map((f, i) => [f, i]));
const [PHONE_1, PHONE_2, RESULT, COMMUNE, SEX, BIRTH, SAMPLE, VALIDATED] = [
  "telephone",
  "prescripteur_telephone",
  "resultat",
  "code_commune_insee",
  "sexe",
  ...DATE_FIELDS,
].map((name) => F[name]);
const DATE_INDEXES = [BIRTH, SAMPLE, VALIDATED];
const PHONE_SEPARATOR = /[ .-]/;

/** Strip ASCII spaces at both ends (polars str.strip_chars(" ")). */
function stripSpaces(s) {
  let a = 0;
  let b = s.length;
  while (a < b && s.charCodeAt(a) === 32) a++;
  while (b > a && s.charCodeAt(b - 1) === 32) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

const isLeap = (y) => y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
const MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * polars str.to_date(format, strict=False), which parses as chrono does: each number may follow whitespace, the
 * year may carry a sign (then any number of digits) or have 1-4 digits, month and day 1-2 digits, nothing may
 * follow. Returns a comparable number y*10000 + m*100 + d, or null.
 */
function chronoDate(s, dayFirst) {
  let pos = 0;
  const number = (max, signed) => {
    const ws = LEADING_SPACE.exec(s.slice(pos));
    if (ws) pos += ws[0].length;
    let sign = 1;
    if (signed && (s[pos] === "-" || s[pos] === "+")) {
      if (s[pos] === "-") sign = -1;
      pos++;
      max = Infinity;
    }
    const start = pos;
    while (pos < s.length && pos - start < max && s.charCodeAt(pos) >= 48 && s.charCodeAt(pos) <= 57) pos++;
    if (pos === start) return null;
    return sign * Number(s.slice(start, pos));
  };
  const literal = (ch) => {
    if (s[pos] !== ch) return false;
    pos++;
    return true;
  };
  let y, m, d;
  if (dayFirst) {
    if ((d = number(2, false)) === null || !literal("/")) return null;
    if ((m = number(2, false)) === null || !literal("/")) return null;
    if ((y = number(4, true)) === null) return null;
  } else {
    if ((y = number(4, true)) === null || !literal("-")) return null;
    if ((m = number(2, false)) === null || !literal("-")) return null;
    if ((d = number(2, false)) === null) return null;
  }
  if (pos !== s.length || m < 1 || m > 12 || d < 1) return null;
  if (d > (m === 2 && isLeap(y) ? 29 : MONTH_DAYS[m - 1])) return null;
  return y * 10000 + m * 100 + d;
}

/** A date as Validator._parsed reads it: YYYY-MM-DD, or DD/MM/YYYY when the column has a "/" and the 5th
 * character is not "-"; the strict forms directly, anything else as chrono would. */
function parseDate(s, french) {
  const dayFirst = french && fifthChar(s) !== "-";
  const at = (i) => s.charCodeAt(i) - 48;
  const digits = (...is) => is.every((i) => at(i) >= 0 && at(i) <= 9);
  let y, m, day;
  if (!dayFirst && s[4] === "-" && s[7] === "-" && digits(0, 1, 2, 3, 5, 6, 8, 9)) {
    [y, m, day] = [at(0) * 1000 + at(1) * 100 + at(2) * 10 + at(3), at(5) * 10 + at(6), at(8) * 10 + at(9)];
  } else if (dayFirst && s[2] === "/" && s[5] === "/" && digits(0, 1, 3, 4, 6, 7, 8, 9)) {
    [day, m, y] = [at(0) * 10 + at(1), at(3) * 10 + at(4), at(6) * 1000 + at(7) * 100 + at(8) * 10 + at(9)];
  } else {
    return chronoDate(s, dayFirst);
  }
  if (m < 1 || m > 12 || day < 1 || day > (m === 2 && isLeap(y) ? 29 : MONTH_DAYS[m - 1])) return null;
  return y * 10000 + m * 100 + day;
}

/** An accepted record (Validator._normalise): the prepared values, dates as YYYY-MM-DD, derived fields. */
function normalised(record, v, d, sexe, resultat, department, age, region) {
  const date = (i) => (v[i].length === 10 && v[i][4] === "-" ? v[i] : isoOf(d[i])); // the same day, ISO
  return {
    nir: v[0],
    nom: v[1],
    prenom: v[2],
    date_naissance: date(3),
    sexe,
    adresse: v[5],
    code_postal: v[6],
    code_commune_insee: v[7],
    commune: v[8],
    telephone: v[9],
    email: v[10],
    prescripteur_rpps: v[11],
    prescripteur_nom: v[12],
    prescripteur_telephone: v[13],
    laboratoire_finess: v[14],
    date_prelevement: date(15),
    date_validation: date(16),
    code_loinc: v[17],
    resultat,
    _record: record,
    _department: department,
    age,
    _region: region,
  };
}
if (Object.keys(normalised(0, FIELDS, [], 0, 0, 0, 0, 0)).slice(0, FIELDS.length).join() !== FIELDS.join()) {
  throw new Error("normalised() must list FIELDS in order");
}

/** The 5th character (polars str.slice(4, 1)), by code point. */
function fifthChar(s) {
  let i = 0;
  for (const ch of s) if (i++ === 4) return ch;
  return "";
}

function isoOf(ordinal) {
  const y = Math.floor(ordinal / 10000);
  const md = ordinal - y * 10000;
  const m = Math.floor(md / 100);
  const d = md % 100;
  return `${String(y).padStart(4, "0")}-${String(m).padStart(2, "0")}-${String(d).padStart(2, "0")}`;
}

function parseToday(today) {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/.exec(String(today));
  if (!m) throw new TypeError(`today must be a YYYY-MM-DD string, not ${today}`);
  return Number(m[1]) * 10000 + Number(m[2]) * 100 + Number(m[3]);
}

/**
 * The rules, bound to their reference data (validate.Validator): today's date, the policy's LOINC set, the commune
 * base (INSEE codes), the department → region table.
 */
export class Validator {
  constructor({ today, loinc, communes, departmentRegions }) {
    this.today = parseToday(today);
    this.loinc = new Set(loinc);
    this.communes = new Set(communes);
    this.regionOf = new Map(Object.entries(departmentRegions));
    this.results = new Map([
      ...Object.values(Result).map((r) => [r, r]),
      ["NÉGATIF", "NEGATIF"],
      ["INDÉTERMINÉ", "INDETERMINE"],
      ["INDÉTERMINE", "INDETERMINE"],
      ["INDETERMINÉ", "INDETERMINE"],
      ...Object.entries(SNOMED_RESULTS),
    ]);
    this.checks = this._checks();
  }

  /**
   * Every rule (Validator._checks), grouped by field in FIELDS order, each field's rules in the order its reason
   * is preferred. A check is [reason, bad(r)] where r holds the prepared values (v), parsed dates (d), result.
   */
  _checks() {
    const byField = FIELDS.map(() => []);
    const add = (name, reason, bad) => byField[F[name]].push([reason, bad]);
    const common = (name) => {
      const i = F[name];
      const max = MAX_LENGTH[name];
      add(name, Reason.TOO_LONG, (r) => r.len[i] > max);
      if (REQUIRED.has(name)) add(name, Reason.REQUIRED, (r) => r.len[i] === 0);
      if (FORMULA.has(name)) {
        add(name, Reason.FORMULA, (r) => FORMULA_START.test(r.v[i]));
        add(name, Reason.INVISIBLE, (r) => INVISIBLE.test(r.v[i]));
      }
    };
    const pattern = (name, regex, reason, optional) => {
      const i = F[name];
      add(name, reason, optional ? (r) => r.v[i] !== "" && !regex.test(r.v[i]) : (r) => !regex.test(r.v[i]));
    };
    const nir = F.nir;
    common("nir");
    add("nir", Reason.NIR_FORMAT, (r) => !NIR_SHAPE.test(r.v[nir]));
    add("nir", Reason.NIR_SEX, (r) => r.v[nir][0] !== "1" && r.v[nir][0] !== "2");
    add("nir", Reason.NIR_FORMAT, (r) => !NIR.test(r.v[nir]));
    add("nir", Reason.NIR_KEY, (r) => !nirKeyOk(r.v[nir]));
    for (const name of ["nom", "prenom", "adresse", "commune", "prescripteur_nom"]) common(name);
    for (const name of DATE_FIELDS) {
      const i = F[name];
      common(name);
      add(name, Reason.DATE_FORMAT, (r) => !DATE.test(r.v[i]));
      add(name, Reason.DATE_UNREAL, (r) => r.d[i] === null);
      add(name, Reason.DATE_RANGE, (r) => r.d[i] !== null && r.d[i] < MIN_DATE);
      add(name, Reason.DATE_FUTURE, (r) => r.d[i] !== null && r.d[i] > this.today);
    }
    common("sexe");
    add("sexe", Reason.SEX, (r) => !SEX_CODES.has(r.v[F.sexe]));
    common("code_postal");
    pattern("code_postal", POSTAL, Reason.POSTAL_CODE, true);
    common("code_commune_insee");
    pattern("code_commune_insee", COMMUNE_CODE, Reason.COMMUNE_FORMAT, false);
    add("code_commune_insee", Reason.COMMUNE_UNKNOWN, (r) => !this.communes.has(r.v[F.code_commune_insee]));
    for (const name of PHONE_FIELDS) {
      common(name);
      pattern(name, PHONE, Reason.PHONE, true);
    }
    common("email");
    pattern("email", EMAIL, Reason.EMAIL, true);
    common("prescripteur_rpps");
    pattern("prescripteur_rpps", RPPS, Reason.RPPS, true);
    common("laboratoire_finess");
    pattern("laboratoire_finess", FINESS, Reason.FINESS, false);
    common("code_loinc");
    add("code_loinc", Reason.LOINC, (r) => !this.loinc.has(r.v[F.code_loinc]));
    common("resultat");
    add("resultat", Reason.RESULT, (r) => r.result === null);
    const [birth, sample, validated] = DATE_FIELDS.map((n) => F[n]);
    add("date_prelevement", Reason.DATE_ORDER_BIRTH, (r) => r.d[sample] !== null && r.d[birth] !== null && r.d[sample] < r.d[birth]);
    add(
      "date_validation",
      Reason.DATE_ORDER_VALIDATION,
      (r) => r.d[validated] !== null && r.d[sample] !== null && r.d[validated] < r.d[sample],
    );
    return byField;
  }

  /**
   * Split records into accepted (normalised, with _department, _region and age; _region is null for a territory
   * no ARS table covers, whose regional share the router holds) and rejections (one per record and field: its
   * first broken rule; "*" when no rule explains a refused record). Mirrors Validator.validate on one batch;
   * padded=false is the reader's word that no value has spaces around it (then nothing is trimmed, as in the CLI).
   */
  validate(records, { padded = true } = {}) {
    const n = FIELDS.length;
    // Validator._needs: which columns are upper-cased, which may hold DD/MM/YYYY dates (decided per batch)
    const upper = new Array(n).fill(false);
    const french = new Array(n).fill(false);
    for (const name of UPPER_FIELDS) upper[F[name]] = records.some((rec) => LOWER_ASCII.test(rec[name] ?? ""));
    for (const name of DATE_FIELDS) french[F[name]] = records.some((rec) => (rec[name] ?? "").includes("/"));

    const accepted = [];
    const rejections = [];
    let rejectedRecords = 0;
    // per-record scratch, reused: raw values, prepared values, their lengths in bytes, parsed dates
    const raw = new Array(n);
    const v = new Array(n);
    const len = new Array(n);
    const d = new Array(n).fill(null);
    const r = { v, d, len, result: null };
    for (const rec of records) {
      // Validator._prepared and _parsed
      for (let i = 0; i < n; i++) {
        const value = rec[FIELDS[i]] ?? "";
        raw[i] = value;
        let x = padded ? stripSpaces(value) : value;
        if (upper[i]) x = x.toUpperCase();
        if ((i === PHONE_1 || i === PHONE_2) && PHONE_SEPARATOR.test(x)) x = x.replace(PHONE_SEPARATORS, "");
        v[i] = x;
        len[i] = utf8Length(x);
      }
      for (const i of DATE_INDEXES) d[i] = len[i] === 10 ? parseDate(v[i], french[i]) : null;
      r.result = this.results.get(v[RESULT].toUpperCase()) ?? null;
      const control = rec._control ?? CONTROL.test(raw.join(""));

      // the rules: each field's first broken one (Validator._report); the record is refused if any
      let found = null;
      for (let i = 0; i < n; i++) {
        let reason = null;
        if (control && CONTROL.test(raw[i])) reason = Reason.CONTROL;
        else {
          const checks = this.checks[i];
          for (let c = 0; c < checks.length; c++) {
            if (checks[c][1](r)) {
              reason = checks[c][0];
              break;
            }
          }
        }
        if (reason !== null) (found ??= []).push({ record: rec._record, field: FIELDS[i], reason });
      }
      if (found !== null || control) {
        rejectedRecords++;
        if (found === null) found = [{ record: rec._record, field: "*", reason: Reason.MALFORMED }];
        for (const f of found) rejections.push(f);
        continue;
      }

      // Validator._normalise
      const commune = v[COMMUNE];
      const department = commune.startsWith("97") ? commune.slice(0, 3) : commune.slice(0, 2);
      const birth = d[BIRTH];
      const sample = d[SAMPLE];
      const age = Math.floor(sample / 10000) - Math.floor(birth / 10000) - (sample % 10000 < birth % 10000 ? 1 : 0);
      const region = this.regionOf.get(department) ?? null;
      accepted.push(normalised(rec._record, v, d, SEX_CODES.get(v[SEX]), r.result, department, age, region));
    }
    return { accepted, rejections, rejectedRecords };
  }
}

/** The NIR key: 97 - (first 13 characters mod 97), Corsica 2A → 19 and 2B → 18 (first occurrence each). */
function nirKeyOk(nir) {
  const body = nir.slice(0, 13).replace("2A", "19").replace("2B", "18");
  const key = nir.slice(13, 15);
  if (!/^[0-9]+$/.test(body) || !/^[0-9]+$/.test(key)) return false;
  return 97 - (Number(body) % 97) === Number(key);
}
