// Instants as labrelay signs them (RFC 3339 UTC to the second, labrelay/domain/timeutil.py). Anything else is
// refused, never guessed: Date.parse would return NaN for a form Python accepts, and a NaN compares false, which
// would let a revocation or a deadline slip by.
const INSTANT = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

export function instant(text) {
  const m = typeof text === "string" ? INSTANT.exec(text) : null;
  if (!m) throw new Error(`not an RFC 3339 UTC instant: ${String(text).slice(0, 40)}`);
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
  if (new Date(ms).toISOString().slice(0, 19) + "Z" !== text) throw new Error(`no such instant: ${text}`);
  return ms;
}
