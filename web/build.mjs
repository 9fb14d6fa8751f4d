// Bundles web/src into the relay's static directory (src/labrelay/http/web/static/app.js), deterministically:
// same sources and lock file, same bytes. Run with `./dev web` (npm ci, then this).
import { build } from "esbuild";
import { cpSync } from "node:fs";

const out = "../src/labrelay/http/web/static";
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  format: "esm",
  target: ["chrome120", "firefox120", "safari17"],
  minify: true,
  legalComments: "eof",
  sourcemap: false,
  outfile: `${out}/app.js`,
  logLevel: "warning",
});
cpSync("src/app.css", `${out}/app.css`);
