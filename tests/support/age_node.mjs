// The reference TypeScript age implementation (npm `age-encryption`, the version web/package-lock.json pins) in
// Node.js, for the interoperability tests (tests/integration/test_age_interop.py). Streams stdin to stdout:
//
//   node age_node.mjs encrypt RECIPIENT [RECIPIENT...] < plaintext > ciphertext
//   node age_node.mjs decrypt IDENTITY_FILE < ciphertext > plaintext
//   node age_node.mjs keygen [--classic]     an identity file, as age-keygen writes it (hybrid unless --classic)
//   node age_node.mjs version                the library's version
//
// The library is the one web/ installs (`npm ci` in web/): resolved from web/package.json, as the pages' bundle
// resolves it. Any failure exits 1 with the library's message on stderr.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Readable, Writable } from "node:stream";
import { pathToFileURL } from "node:url";

const webPackage = new URL("../../web/package.json", import.meta.url);
const require = createRequire(webPackage);
const entry = require.resolve("age-encryption");
const age = await import(pathToFileURL(entry).href);

async function pipeOut(stream) {
    await stream.pipeTo(Writable.toWeb(process.stdout));
}

function stdin() {
    return Readable.toWeb(process.stdin);
}

function identitiesIn(path) {
    const found = readFileSync(path, "ascii")
        .split(/\r?\n/)
        .map((line) => line.trim())
        .filter((line) => line.startsWith("AGE-SECRET-KEY-"));
    if (found.length === 0) throw new Error(`${path} holds no age identity`);
    return found;
}

function version() {
    let dir = entry;
    for (;;) {
        dir = dir.slice(0, dir.lastIndexOf("/"));
        try {
            const doc = JSON.parse(readFileSync(`${dir}/package.json`, "utf8"));
            if (doc.name === "age-encryption") return doc.version;
        } catch {
            // not the package's root yet
        }
        if (!dir) throw new Error("age-encryption's package.json not found");
    }
}

const [command, ...args] = process.argv.slice(2);
try {
    if (command === "encrypt") {
        if (args.length === 0) throw new Error("encrypt: no recipient");
        const e = new age.Encrypter();
        for (const recipient of args) e.addRecipient(recipient);
        await pipeOut(await e.encrypt(stdin()));
    } else if (command === "decrypt") {
        if (args.length !== 1) throw new Error("decrypt: one identity file");
        const d = new age.Decrypter();
        for (const identity of identitiesIn(args[0])) d.addIdentity(identity);
        await pipeOut(await d.decrypt(stdin()));
    } else if (command === "keygen") {
        const identity = args[0] === "--classic" ? await age.generateX25519Identity() : await age.generateHybridIdentity();
        const recipient = await age.identityToRecipient(identity);
        process.stdout.write(`# created: by age-encryption ${version()}\n# public key: ${recipient}\n${identity}\n`);
    } else if (command === "version") {
        process.stdout.write(`${version()}\n`);
    } else {
        throw new Error(`unknown command ${command}: encrypt, decrypt, keygen or version`);
    }
} catch (err) {
    process.stderr.write(`age_node: ${err && err.message ? err.message : err}\n`);
    process.exit(1);
}
