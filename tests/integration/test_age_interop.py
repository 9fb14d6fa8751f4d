"""Interoperability of our age payloads with the reference TypeScript implementation (npm ``age-encryption``, the
version web/package-lock.json pins, the library the pages use), in Node.js, both ways, through the real product.

* What a lab sends with ``labrelay send`` to hybrid post-quantum recipients (a routed batch, a document sent as is,
  and the breach ledger sealed to the DPO) decrypts in Node with the recipient's own ``identity.txt``, byte for byte
  as labrelay decrypts it, and its header holds only ``mlkem768x25519`` stanzas.
* A file Node seals to our hybrid recipient, uploaded as a lab's client would, is fetched and decrypted by the real
  ``labrelay fetch``, byte for byte; and by age_stream directly, at the STREAM chunk boundaries.
* An identity file Node generates is read by ``AgeIdentity.load_all``, derives the same recipient, and decrypts
  what we seal to it (classic identities too).

Node runs tests/support/age_node.mjs with web/node_modules (``npm ci`` in web/, which ./dev test does before
pytest). Without node or web/node_modules these tests are skipped, except in CI (``LABRELAY_CI`` set), where they
fail, as ./dev's web checks do.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.keystore import Party
from labrelay.crypto import age_format, age_stream
from labrelay.crypto.keys import AgeIdentity, write_private
from labrelay.domain.names import new_id
from labrelay.domain.transfers import Manifest
from tests.support.world import REPO, World, sent_ids

SCRIPT = Path(__file__).parents[1] / "support" / "age_node.mjs"
LIBRARY = REPO / "web" / "node_modules" / "age-encryption"
LEAST = (0, 3, 1)  # 0.3.0 refuses the long age1pq1 recipients when encrypting
CHUNK = age_format.CHUNK


@dataclass(frozen=True)
class Node:
    """tests/support/age_node.mjs under Node.js: the reference implementation, streaming files."""

    exe: str

    def run(
        self, *args: str | Path, source: Path | None = None, out: Path | None = None
    ) -> subprocess.CompletedProcess:
        """``node age_node.mjs ARGS < source > out``; its stderr captured."""
        with contextlib.ExitStack() as files:
            stdin = files.enter_context(source.open("rb")) if source else subprocess.DEVNULL
            stdout = files.enter_context(out.open("wb")) if out else subprocess.DEVNULL
            return subprocess.run(
                [self.exe, SCRIPT, *map(str, args)],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )

    def encrypt(self, recipients: list[str], source: Path, out: Path) -> None:
        done = self.run("encrypt", *recipients, source=source, out=out)
        assert done.returncode == 0, done.stderr.decode()

    def decrypt(self, identity_file: Path, source: Path, out: Path) -> bytes:
        """The plaintext Node writes; AssertionError with its message when it refuses the file."""
        done = self.run("decrypt", identity_file, source=source, out=out)
        assert done.returncode == 0, done.stderr.decode()
        return out.read_bytes()

    def refuses(self, identity_file: Path, source: Path, scratch: Path) -> str:
        """Node's error message for a file it must not decrypt."""
        done = self.run("decrypt", identity_file, source=source, out=scratch)
        assert done.returncode == 1, f"Node decrypted {source.name}, which it must refuse"
        return done.stderr.decode()

    def keygen(self, *, classic: bool = False) -> str:
        done = subprocess.run(
            [self.exe, SCRIPT, "keygen", *(["--classic"] if classic else [])],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode("ascii")


@pytest.fixture(scope="session")
def node() -> Node:
    exe = shutil.which("node")
    missing = [
        what for what, found in [("node", exe), ("web/node_modules/age-encryption", LIBRARY.is_dir())] if not found
    ]
    if missing:
        message = f"{' and '.join(missing)} not found (Node.js, and `npm ci` in web/, which ./dev test runs)"
        if os.environ.get("LABRELAY_CI"):
            pytest.fail(f"CI needs node and web/node_modules: {message}")
        pytest.skip(message)
    assert exe is not None
    done = subprocess.run([exe, SCRIPT, "version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    version = tuple(int(part) for part in done.stdout.strip().split("."))
    assert version >= LEAST, f"age-encryption {done.stdout.strip()} is older than 0.3.1"
    return Node(exe)


def stanza_types(sealed: bytes) -> list[str]:
    head = sealed[: sealed.index(b"\n--- ")].decode("ascii")
    return [line.split(" ")[1] for line in head.splitlines() if line.startswith("-> ")]


def ours(sealed: Path, identities: list[AgeIdentity], expect: age_stream.Expected | None = None) -> bytes:
    out = io.BytesIO()
    with sealed.open("rb") as source:
        age_stream.decrypt(source, out, identities, expect=expect)
    return out.getvalue()


def identity_file(path: Path, *identities: AgeIdentity) -> Path:
    write_private(path, "".join(f"{i.secret}\n" for i in identities).encode("ascii"))
    return path


# ------------------------------------------------------------------ labrelay seals, Node opens


def test_what_labrelay_sends_to_hybrid_recipients_decrypts_in_node_byte_for_byte(
    node: Node, world: World, cli, batch: Path, tmp_path: Path
) -> None:
    for name in ("lab-paris-01", "cnam", "ars-11", "dpo"):  # the world's keys are hybrid: the default
        assert world.parties[name].age_recipient.startswith("age1pq1"), name
        assert all(i.is_pq for i in world.parties[name].identities)
    lab = world.party_dir("lab-paris-01")
    routed = cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--to", "ars-11")
    assert routed.code == 0, str(routed)
    assert set(sent_ids(routed.out)) == {"cnam", "ars-11"}
    document = tmp_path / "scan.bin"
    document.write_bytes(os.urandom(3 * CHUNK + 1234))  # a document sent as is: the plaintext is the file itself
    as_is = cli("send", document, "--as", lab, "--server", world.url, "--to", "cnam", "--as-is")
    assert as_is.code == 0, str(as_is)
    [document_id] = sent_ids(as_is.out).values()

    checked = 0
    for name in ("cnam", "ars-11"):
        party = world.parties[name]
        out = tmp_path / f"raw-{name}"
        fetched = cli("fetch", "--as", party.path, "--server", world.url, "--out", out, "--raw")
        assert fetched.code == 0, str(fetched)
        raws = sorted(out.glob("*.age"))
        assert len(raws) == (2 if name == "cnam" else 1)
        for raw in raws:
            sidecar = json.loads(raw.with_name(raw.name.replace(".age", ".manifest.json")).read_text())
            manifest = sidecar["manifest"]["payload"]
            assert manifest["recipient_key"] == party.age_recipient
            sealed = raw.read_bytes()
            assert stanza_types(sealed) == ["mlkem768x25519"]  # one stanza, post-quantum: nothing classic
            expect = age_stream.Expected(manifest["size"], manifest["sha256"])
            plain = ours(raw, party.identities, expect)
            assert node.decrypt(party.path / "identity.txt", raw, tmp_path / "node.out") == plain
            if manifest["transfer_id"] == document_id:
                assert plain == document.read_bytes()
            else:  # a routed share: CSV, compressed when the manifest says so
                text = gzip.decompress(plain) if manifest.get("compression") == "gzip" else plain
                assert manifest["media_type"] == "text/csv"
                assert len(text.decode("utf-8").splitlines()) > 1
            checked += 1
    assert checked == 3

    # The breach ledger of the routed batch, sealed on the lab's machine to the DPO.
    [ledger] = list((lab / "ledger").glob("*.persons.age"))
    assert stanza_types(ledger.read_bytes()) == ["mlkem768x25519"]
    dpo = world.parties["dpo"]
    assert node.decrypt(dpo.path / "identity.txt", ledger, tmp_path / "ledger.out") == ours(ledger, dpo.identities)

    # Node is not merely agreeing: another identity, or a byte changed, and it refuses.
    stranger = identity_file(tmp_path / "stranger.txt", AgeIdentity.generate())
    assert "no identity matched" in node.refuses(stranger, ledger, tmp_path / "refused.out")
    changed = bytearray(ledger.read_bytes())
    changed[-100] ^= 0x01
    (tmp_path / "changed.age").write_bytes(changed)
    node.refuses(dpo.path / "identity.txt", tmp_path / "changed.age", tmp_path / "refused.out")


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3_000_000])
def test_what_age_stream_seals_decrypts_in_node_at_chunk_boundaries(node: Node, tmp_path: Path, size: int) -> None:
    ident = AgeIdentity.generate()
    ident.save(tmp_path / "identity.txt", "now")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    sealed = tmp_path / "sealed.age"
    with plain.open("rb") as src, sealed.open("wb") as dst:
        age_stream.encrypt(src, dst, [ident.recipient])
    assert node.decrypt(tmp_path / "identity.txt", sealed, tmp_path / "out") == plain.read_bytes()


def test_node_refuses_what_no_reader_may_accept(node: Node, tmp_path: Path) -> None:
    """Our truncations and an aborted StreamingSealer are refused by the reference implementation too."""
    ident = AgeIdentity.generate()
    keys = identity_file(tmp_path / "identity.txt", ident)
    sink = io.BytesIO()
    age_stream.encrypt(io.BytesIO(os.urandom(2 * CHUNK)), sink, [ident.recipient])
    sealed = sink.getvalue()
    aborted = io.BytesIO()
    sealer = age_stream.StreamingSealer(aborted, ident.recipient)
    sealer.write(os.urandom(CHUNK + 1))
    sealer.abort()
    bad = {
        "cut at a chunk boundary": sealed[: -age_format.ENCRYPTED_CHUNK],
        "cut in the last tag": sealed[:-1],
        "trailing byte": sealed + b"\x00",
        "aborted sealer": aborted.getvalue(),
    }
    for what, data in bad.items():
        path = tmp_path / "bad.age"
        path.write_bytes(data)
        assert node.refuses(keys, path, tmp_path / "out"), what


# ------------------------------------------------------------------ Node seals, labrelay opens


def upload_sealed(world: World, sender: Party, recipient: Party, sealed: bytes, media_type: str) -> str:
    """A transfer of ``sealed`` built by hand, as a lab's client makes one: a signed manifest, then the upload."""
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = Manifest(
        transfer_id=new_id(),
        batch_id=new_id(),
        sender=sender.name,
        recipient=recipient.name,
        recipient_key=recipient.age_recipient,
        size=len(sealed),
        sha256=hashlib.sha256(sealed).hexdigest(),
        record_count=None,
        media_type=media_type,
        created=now,
        deadline=now + timedelta(days=1),
    )
    with world.client(sender.name) as client:
        client.create_transfer(sender.sign(manifest.to_payload()))
        client.upload(manifest.transfer_id, io.BytesIO(sealed), len(sealed), 1 << 20)
        assert client.transfer(manifest.transfer_id)["state"] == "available"
    return manifest.transfer_id


def test_a_file_node_seals_to_our_hybrid_recipient_is_fetched_by_labrelay(
    node: Node, world: World, cli, tmp_path: Path
) -> None:
    lab, cnam = world.parties["lab-paris-01"], world.parties["cnam"]
    plain = tmp_path / "letter.bin"
    plain.write_bytes(b"synthetic letter, no health data\n" + os.urandom(3 * CHUNK))
    sealed = tmp_path / "letter.age"
    node.encrypt([cnam.age_recipient], plain, sealed)
    assert stanza_types(sealed.read_bytes()) == ["mlkem768x25519"]
    assert ours(sealed, cnam.identities) == plain.read_bytes()  # age_stream directly

    transfer_id = upload_sealed(world, lab, cnam, sealed.read_bytes(), "application/octet-stream")
    out = tmp_path / "inbox"
    fetched = cli("fetch", "--as", cnam.path, "--server", world.url, "--out", out, "--json")
    assert fetched.code == 0, str(fetched)
    [got] = json.loads(fetched.out)["fetched"]
    assert got["transfer_id"] == transfer_id
    assert got["acknowledged"] is True
    assert got["unparsed"] is True
    assert Path(got["file"]).read_bytes() == plain.read_bytes()
    assert world.stored() == []  # acknowledged: the relay deleted it


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3_000_000])
def test_what_node_seals_decrypts_with_age_stream_at_chunk_boundaries(node: Node, tmp_path: Path, size: int) -> None:
    ident, other = AgeIdentity.generate(), AgeIdentity.generate()
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    sealed = tmp_path / "sealed.age"
    node.encrypt([other.recipient, ident.recipient], plain, sealed)
    raw = sealed.read_bytes()
    assert stanza_types(raw) == ["mlkem768x25519"] * 2
    expect = age_stream.Expected(len(raw), hashlib.sha256(raw).hexdigest())
    for identities in ([ident], [other], [AgeIdentity.generate(), ident]):
        assert ours(sealed, identities, expect) == plain.read_bytes()
    with pytest.raises(age_format.AgeError) as caught:
        ours(sealed, [AgeIdentity.generate()])
    assert caught.value.stage == "no match"


# ------------------------------------------------------------------ Node's identities


@pytest.mark.parametrize("classic", [False, True], ids=["hybrid", "classic"])
def test_an_identity_node_generates_is_read_and_used_by_labrelay(node: Node, tmp_path: Path, classic: bool) -> None:
    text = node.keygen(classic=classic)
    keys = tmp_path / "node-identity.txt"
    write_private(keys, text.encode("ascii"))
    [loaded] = AgeIdentity.load_all(keys)
    assert loaded.is_pq is not classic
    listed = next(line.split(": ")[1] for line in text.splitlines() if line.startswith("# public key: "))
    assert loaded.recipient == listed  # the same recipient derived from the same seed (ML-KEM-768 and X25519 parts)
    if not classic:
        assert len(listed) == 1959
        assert listed.startswith("age1pq1")

    for size in (0, CHUNK, 3 * CHUNK + 5):
        plain = os.urandom(size)
        sealed = tmp_path / f"ours-{size}.age"
        with sealed.open("wb") as dst:
            age_stream.encrypt(io.BytesIO(plain), dst, [loaded.recipient])
        assert stanza_types(sealed.read_bytes()) == [age_format.HYBRID_TYPE if not classic else age_format.X25519_TYPE]
        assert node.decrypt(keys, sealed, tmp_path / "out") == plain
        # and the other way, with the same identity file
        (tmp_path / "plain").write_bytes(plain)
        node.encrypt([listed], tmp_path / "plain", tmp_path / "theirs.age")
        assert ours(tmp_path / "theirs.age", AgeIdentity.load_all(keys)) == plain
