"""Offline enrolment (docs/enrolment.md): the party requests, the authority signs offline, anyone carries the entry
to a real relay process; and each check that keeps it fail-closed, tried with a forged or altered file."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from labrelay.client.keystore import Authority, Party
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import b64u, unb64u
from labrelay.domain.parties import Role
from labrelay.errors import IntegrityError
from tests.support.world import CliResult, World

FINESS = "750712184"  # AP-HP's, a real one: its last digit is a Luhn key
SIREN = "180035024"


def ok(result: CliResult) -> CliResult:
    assert result.code == 0, str(result)
    return result


def refused(result: CliResult, needle: str, code: int = 3) -> None:
    """Refused with ``code``, in one line on stderr that says why."""
    assert result.code == code, str(result)
    [line] = result.err.splitlines()
    assert needle in line, line


@contextmanager
def out_of_reach(auth_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """The authority's machine taken offline: its directory moved away and made unreadable (chmod 000: tests may
    run as root, whom modes do not stop, hence the move too). Put back afterwards, for the clean-up."""
    vault = tmp_path / "offline-machine"
    vault.mkdir()
    shutil.move(auth_dir, vault / "authority")
    vault.chmod(0)
    try:
        yield vault
    finally:
        vault.chmod(0o700)


def request_and_sign(cli, world: World, name: str, role: str, *flags: str) -> Path:
    """``party new``, ``party request`` and ``authority sign``: ENTRY.json for a new party of ``world``."""
    ok(cli("party", "new", name, "--role", role, "--authority", world.pub, "--out", world.parties_dir))
    request, entry = world.root / f"{name}.request.json", world.root / f"{name}.entry.json"
    ok(cli("party", "request", world.parties_dir / name, "--out", request, *flags))
    ok(cli("authority", "sign", request, "--authority", world.auth_dir, "--out", entry))
    return entry


def test_offline_enrolment_with_the_authority_key_out_of_reach(world: World, cli, tmp_path: Path, batch: Path) -> None:
    """A lab (with its FINESS) and SpF (with its SIREN) are enrolled by an authority whose directory is gone from
    the machine before anything reaches the relay; the lab sends (pseudonymising for SpF with the key it unsealed),
    SpF fetches, and the directory shows both identifiers."""
    world.add("admin-1", Role.ADMIN)  # carries the recipient's entry: an administrator, not the recipient
    pseudonym_key = world.authority.pseudonym_key()
    lab_entry = request_and_sign(cli, world, "lab-lyon-02", "lab", "--finess", FINESS)
    spf_entry = request_and_sign(cli, world, "spf", "recipient", "--organisation", "180 035 024")
    lab, spf = world.parties_dir / "lab-lyon-02", world.parties_dir / "spf"

    with out_of_reach(world.auth_dir, tmp_path):
        assert not world.auth_dir.exists()
        registered = ok(cli("party", "register", lab_entry, "--server", world.url, "--party", lab))
        assert "lab-lyon-02 registered" in registered.out
        assert "with its pseudonym key" in registered.out
        ok(cli("party", "register", spf_entry, "--server", world.url, "--as", world.party_dir("admin-1")))
        ok(cli("party", "register", spf_entry, "--server", world.url, "--party", spf))  # installs; relay: known

        assert Party.load(lab).pseudonym_key() == pseudonym_key
        assert Party.load(spf).pseudonym_key() is None
        shown = ok(cli("party", "show", lab)).out
        assert f"identifier:    FINESS {FINESS}" in shown
        assert "entry:         valid" in shown
        listing = ok(cli("directory", "--as", world.party_dir("cnam"), "--server", world.url)).out
        [lab_line] = [line for line in listing.splitlines() if line.startswith("lab-lyon-02 ")]
        assert lab_line.endswith(f"FINESS {FINESS}")
        [spf_line] = [line for line in listing.splitlines() if line.startswith("spf ")]
        assert spf_line.endswith(f"SIREN {SIREN}")

        # A routed send: SpF's share is pseudonymised with the key the lab unsealed, and sealed to SpF's key.
        sent = ok(cli("send", batch, "--as", lab, "--server", world.url))
        assert "to spf" in sent.out
        out = tmp_path / "in"
        fetched = json.loads(ok(cli("fetch", "--as", spf, "--server", world.url, "--out", out, "--json")).out)
        [got] = fetched["fetched"]
        assert got["records"] == 300
        assert got["acknowledged"] is True


@pytest.mark.threat("T3")
@pytest.mark.parametrize("tamper", ["age_recipient", "signing_key", "sig", "signer"])
def test_a_request_whose_self_signature_does_not_hold_is_refused(cli, tmp_path: Path, tamper: str) -> None:
    """A request altered on its way to the authority (another age key slipped in: payloads would be sealed to it),
    or signed by someone who does not hold the signing key it names, is refused: nothing signed, nothing written."""
    auth = Authority.init(tmp_path / "authority")
    ok(
        cli(
            "party",
            "new",
            "lab-x",
            "--role",
            "lab",
            "--authority",
            auth.path / "authority.pub",
            "--out",
            tmp_path / "p",
        )
    )
    ok(
        cli(
            "party", "new", "evil", "--role", "lab", "--authority", auth.path / "authority.pub", "--out", tmp_path / "p"
        )
    )
    request = tmp_path / "request.json"
    ok(cli("party", "request", tmp_path / "p" / "lab-x", "--out", request, "--finess", FINESS))
    doc = json.loads(request.read_text())
    evil = Party.load(tmp_path / "p" / "evil")
    if tamper == "sig":  # the attacker's key signs, the request still names lab-x's key
        doc = {**sign_envelope(doc["payload"], evil.signing_key, "lab-x")}
    elif tamper == "signer":  # a valid self-signature, but claimed under another name than the payload's
        doc["signer"] = "evil"
    else:
        doc["payload"][tamper] = getattr(evil, "age_recipient" if tamper == "age_recipient" else "signing_public")
    request.write_text(json.dumps(doc))
    result = cli("authority", "sign", request, "--authority", auth.path, "--out", tmp_path / "entry.json")
    refused(result, "enrolment request refused")
    assert not (tmp_path / "entry.json").exists()
    assert not (auth.path / "issued.jsonl").exists()


@pytest.mark.threat("T3")
def test_a_malformed_finess_is_refused(world: World, cli) -> None:
    """At the party (a usage error) and, in a request another tool signed properly, at the authority (a refusal);
    an authority-signed entry with one never gets past the relay either."""
    ok(cli("party", "new", "lab-z", "--role", "lab", "--authority", world.pub, "--out", world.parties_dir))
    lab = Party.load(world.parties_dir / "lab-z")
    for bad in ("75071218", "7507121845", "2C0712184", "75O712184", "²50712184", "2a0712184"):
        refused(cli("party", "request", lab.path, "--out", world.root / "r.json", "--finess", bad), "FINESS", 2)
    assert not (world.root / "r.json").exists()
    refused(cli("party", "request", lab.path, "--out", world.root / "r.json", "--organisation", SIREN), "lab", 2)

    request = world.root / "crafted.json"
    payload = {
        "type": "enrolment-request",
        "v": 1,
        "name": lab.name,
        "role": "lab",
        "region": None,
        "age_recipient": lab.age_recipient,
        "signing_key": lab.signing_public,
        "authority": lab.authority.b64,
        "created": "2026-01-01T00:00:00Z",
        "identifier": {"scheme": "finess", "value": "75071218X"},
    }
    request.write_text(json.dumps(lab.sign(payload)))
    out = world.root / "entry.json"
    refused(cli("authority", "sign", request, "--authority", world.auth_dir, "--out", out), "invalid FINESS")
    assert not out.exists()

    # The authority's own key signs a malformed one (a bug, or another tool): the relay refuses it all the same.
    ok(cli("authority", "sign", _request(cli, world, lab), "--authority", world.auth_dir, "--out", out))
    entry = json.loads(out.read_text())["entry"]
    entry["payload"]["identifier"]["value"] = "75071218X"
    forged = sign_envelope(entry["payload"], world.authority.key, entry["signer"])
    out.write_text(json.dumps({"kind": "labrelay-enrolment", "v": 1, "entry": forged}))
    refused(
        cli("party", "register", out, "--server", world.url, "--as", world.party_dir("lab-paris-01")), "invalid FINESS"
    )


def _request(cli, world: World, lab: Party) -> Path:
    path = world.root / f"{lab.name}.request.json"
    ok(cli("party", "request", lab.path, "--out", path, "--finess", FINESS))
    return path


@pytest.mark.threat("T3")
@pytest.mark.parametrize("field", ["age_recipient", "not_after"])
def test_an_entry_altered_after_signing_is_refused_by_the_relay_and_by_register(world: World, cli, field: str) -> None:
    """ENTRY.json travels through anyone's hands: an age key swapped in it, or its validity stretched, fails the
    authority's signature at the relay (carried by an administrator, nothing checked on the way) and at the party
    (which installs nothing)."""
    world.add("admin-1", Role.ADMIN)
    entry_file = request_and_sign(cli, world, "lab-lyon-03", "lab", "--finess", FINESS)
    doc = json.loads(entry_file.read_text())
    altered = {"age_recipient": Party.load(world.party_dir("cnam")).age_recipient, "not_after": "2099-01-01T00:00:00Z"}
    doc["entry"]["payload"][field] = altered[field]
    entry_file.write_text(json.dumps(doc))
    admin, lab = world.party_dir("admin-1"), world.parties_dir / "lab-lyon-03"

    refused(cli("party", "register", entry_file, "--server", world.url, "--as", admin), "party-entry refused")
    refused(cli("party", "register", entry_file, "--server", world.url, "--party", lab), "party-entry refused")
    assert not (lab / "entry.json").exists()
    assert not (lab / "pseudonym.key").exists()
    assert world.db("SELECT COUNT(*) FROM parties WHERE name = 'lab-lyon-03'") == [(0,)]


@pytest.mark.threat("T3")
def test_register_with_an_entry_for_other_keys_is_refused(world: World, cli, tmp_path: Path) -> None:
    """A party directory of the same name on another machine (other keys) must not install, nor register under
    its own key, an entry signed for the first: it would hold an entry whose keys it does not have."""
    entry_file = request_and_sign(cli, world, "ars-76", "recipient", "--organisation", SIREN)
    other = tmp_path / "other-machine"
    ok(cli("party", "new", "ars-76", "--role", "recipient", "--authority", world.pub, "--out", other))
    result = cli("party", "register", entry_file, "--server", world.url, "--party", other / "ars-76")
    refused(result, "the entry is not ars-76's: its age recipient and signing key differ")
    assert not (other / "ars-76" / "entry.json").exists()
    assert world.db("SELECT COUNT(*) FROM parties WHERE name = 'ars-76'") == [(0,)]


@pytest.mark.threat("T3")
def test_the_pseudonym_key_travels_sealed_and_signed(world: World, cli, tmp_path: Path) -> None:
    """ENTRY.json holds the pseudonym key only sealed to the lab's age key: not in clear, not for another party's
    key; and a key sealed by someone else to the lab's (public) recipient is refused, not installed."""
    key = world.authority.pseudonym_key()
    entry_file = request_and_sign(cli, world, "lab-lyon-05", "lab", "--finess", FINESS)
    text = entry_file.read_text()
    assert key not in text
    assert key.upper() not in text
    assert b64u(key.encode()) not in text
    assert b64u(bytes.fromhex(key)) not in text
    lab = Party.load(world.parties_dir / "lab-lyon-05")
    doc = json.loads(text)

    # The grant is useless to anyone but the lab: it does not open with another party's identity.
    entry = lab.check_own_entry(doc["entry"])
    with pytest.raises(IntegrityError, match="age decryption failed"):
        age_stream.decrypt(
            io.BytesIO(unb64u(doc["pseudonym_key"]["payload"]["sealed"])),
            io.BytesIO(),
            Party.load(world.party_dir("cnam")).identities,
            expect=None,
        )

    # Someone substitutes a key of their own, sealed to the lab's public recipient (any authority can, as anyone
    # can seal to it) and signed by a key that is not the pinned authority's: refused, and nothing installed.
    rogue = Authority.init(tmp_path / "rogue")
    doc["pseudonym_key"] = rogue.grant_pseudonym_key(entry, datetime.now(UTC))
    entry_file.write_text(json.dumps(doc))
    refused(cli("party", "register", entry_file, "--server", world.url, "--party", lab.path), "pseudonym-key-grant")
    assert lab.pseudonym_key() is None
    assert not (lab.path / "entry.json").exists()


@pytest.mark.threat("T3")
def test_only_the_party_itself_an_administrator_or_the_authority_carries_an_entry(world: World, cli) -> None:
    """Another enrolled party (a lab) carrying someone's authority-signed entry is refused; an administrator is
    not. The lab's own-key path and enrol --finess are the ones the other tests use."""
    world.add("admin-1", Role.ADMIN)
    entry_file = request_and_sign(cli, world, "ars-84", "recipient", "--organisation", "13000548100010")
    carried_by_lab = cli(
        "party", "register", entry_file, "--server", world.url, "--as", world.party_dir("lab-paris-01")
    )
    refused(carried_by_lab, "a party registers its own entry, or an administrator carries it")
    assert world.db("SELECT COUNT(*) FROM parties WHERE name = 'ars-84'") == [(0,)]
    ok(cli("party", "register", entry_file, "--server", world.url, "--as", world.party_dir("admin-1")))
    assert world.db("SELECT COUNT(*) FROM parties WHERE name = 'ars-84'") == [(1,)]


def test_one_step_enrol_takes_an_identifier_too(world: World, cli) -> None:
    ok(cli("party", "new", "lab-nice-01", "--role", "lab", "--authority", world.pub, "--out", world.parties_dir))
    lab = world.parties_dir / "lab-nice-01"
    args = ("party", "enroll", lab, "--authority", world.auth_dir, "--server", world.url)
    refused(cli(*args, "--organisation", SIREN), "a lab cannot carry a SIREN", 2)
    enrolled = ok(cli(*args, "--finess", "750712185"))  # a wrong check digit: signed all the same, with a warning
    assert "Luhn" in enrolled.err
    assert "identifier:    FINESS 750712185" in ok(cli("party", "show", lab)).out
    assert os.stat(lab / "pseudonym.key").st_mode & 0o077 == 0


def test_a_key_rotation_keeps_the_partys_identifier(world: World, cli) -> None:
    """``party rotate`` has the authority sign the party's entry again with its new key: the SIREN it was enrolled
    with stays in it (it was dropped: ``identifier: -`` after a rotation)."""
    ok(cli("party", "new", "ars-test", "--role", "recipient", "--authority", world.pub, "--out", world.parties_dir))
    ars = world.parties_dir / "ars-test"
    ok(cli("party", "enroll", ars, "--authority", world.auth_dir, "--server", world.url, "--organisation", SIREN))
    assert f"identifier:    SIREN {SIREN}" in ok(cli("party", "show", ars)).out
    ok(cli("party", "rotate", ars, "--authority", world.auth_dir, "--server", world.url))
    assert f"identifier:    SIREN {SIREN}" in ok(cli("party", "show", ars)).out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.threat("T3")
def test_a_revoked_labs_request_is_not_signed_again(world: World, cli) -> None:
    """The authority revokes a lab (its key compromised); the same REQUEST.json signed again would issue an entry
    after the revocation, which the revocation (by name and issue time) does not void: the compromised keys back in
    force, and the pseudonym key sealed to them. Refused, nothing signed or written, unless --force."""
    entry_file = request_and_sign(cli, world, "lab-lyon-06", "lab", "--finess", FINESS)
    request = world.root / "lab-lyon-06.request.json"
    ok(cli("party", "register", entry_file, "--server", world.url, "--party", world.parties_dir / "lab-lyon-06"))
    ok(cli("authority", "revoke", "lab-lyon-06", "--authority", world.auth_dir, "--server", world.url))
    issued = world.auth_dir / "issued.jsonl"
    before = _lines(issued)

    again = world.root / "again.entry.json"
    result = cli("authority", "sign", request, "--authority", world.auth_dir, "--out", again)
    refused(result, "its signing key and age recipient belonged to lab-lyon-06's entry")
    assert "revoked at" in result.err
    assert "--force" in result.err
    assert not again.exists()
    assert _lines(issued) == before
    assert "pseudonym" not in result.out

    forced = ok(cli("authority", "sign", request, "--authority", world.auth_dir, "--out", again, "--force"))
    assert "WARNING: --force: signing lab-lyon-06 although" in forced.err
    assert again.exists()


@pytest.mark.threat("T3")
def test_keys_a_newer_entry_replaced_are_not_signed_again(cli, tmp_path: Path) -> None:
    """A recipient re-created with new keys (its old machine lost) and signed: its old REQUEST.json, signed again,
    would put the keys it left behind back in force. Refused."""
    auth = Authority.init(tmp_path / "authority")
    pub = auth.path / "authority.pub"
    old, new = tmp_path / "old-machine", tmp_path / "new-machine"
    for n, machine in enumerate((old, new), 1):  # the new machine's request made after the old one's entry
        ok(cli("party", "new", "ars-93", "--role", "recipient", "--authority", pub, "--out", machine))
        req = machine / "request.json"
        ok(cli("party", "request", machine / "ars-93", "--out", req, "--organisation", SIREN))
        signed = ok(cli("authority", "sign", req, "--authority", auth.path, "--out", tmp_path / f"{n}.json"))
    assert "other keys: the new entry replaces them" in signed.err

    result = cli("authority", "sign", old / "request.json", "--authority", auth.path, "--out", tmp_path / "3.json")
    refused(result, "its signing key and age recipient belonged to ars-93's entry")
    assert "replaced by entry" in result.err
    assert not (tmp_path / "3.json").exists()


@pytest.mark.threat("T3")
def test_a_request_older_than_the_names_newest_entry_is_refused(cli, tmp_path: Path) -> None:
    """Same keys, nothing revoked, but the request predates an entry this authority issued since: it was made
    before whatever the authority decided for that name in between. Refused."""
    auth = Authority.init(tmp_path / "authority")
    ok(
        cli(
            "party",
            "new",
            "ars-75",
            "--role",
            "recipient",
            "--authority",
            auth.path / "authority.pub",
            "--out",
            tmp_path,
        )
    )
    party = Party.load(tmp_path / "ars-75")

    def crafted(created: str) -> Path:
        payload = {
            "type": "enrolment-request",
            "v": 1,
            "name": party.name,
            "role": "recipient",
            "region": None,
            "age_recipient": party.age_recipient,
            "signing_key": party.signing_public,
            "authority": party.authority.b64,
            "created": created,
        }
        path = tmp_path / f"{created[:10]}.json"
        path.write_text(json.dumps(party.sign(payload)))
        return path

    ok(cli("authority", "sign", crafted("2026-01-02T00:00:00Z"), "--authority", auth.path, "--out", tmp_path / "e"))
    result = cli(
        "authority", "sign", crafted("2026-01-01T00:00:00Z"), "--authority", auth.path, "--out", tmp_path / "f"
    )
    refused(result, "it was made at 2026-01-01T00:00:00Z, before this authority's newest entry or revocation")
    assert not (tmp_path / "f").exists()


def test_the_keys_are_printed_before_anything_is_signed(cli, tmp_path: Path, monkeypatch) -> None:
    """The authority reads the keys it signs before the pseudonym key is sealed to them: were sealing to fail, what
    it was about to sign is on the screen, and nothing is written."""
    auth = Authority.init(tmp_path / "authority")
    ok(
        cli(
            "party",
            "new",
            "lab-lyon-07",
            "--role",
            "lab",
            "--authority",
            auth.path / "authority.pub",
            "--out",
            tmp_path,
        )
    )
    lab = Party.load(tmp_path / "lab-lyon-07")
    request, out = tmp_path / "r.json", tmp_path / "e.json"
    ok(cli("party", "request", lab.path, "--out", request, "--finess", FINESS))

    def sealing_fails(*_args: object) -> None:
        raise IntegrityError("sealing interrupted")

    monkeypatch.setattr(Authority, "issue", sealing_fails)
    result = cli("authority", "sign", request, "--authority", auth.path, "--out", out)
    assert result.code == 3, str(result)
    assert f"age recipient: {lab.age_recipient}" in result.out
    assert f"signing key:   {lab.signing_public}" in result.out
    assert "sealed to" in result.out
    assert not out.exists()


@pytest.mark.threat("T3")
def test_a_lab_holding_another_pseudonym_key_is_refused_before_anything_is_sent(world: World, cli) -> None:
    """A lab that already holds a pseudonym key other than the one granted (its earlier pseudonyms were made with
    it) is refused before the entry reaches the relay or its own directory, offline and in one step alike."""
    from labrelay.crypto import pseudonym  # noqa: PLC0415 - only this test writes a key of its own

    entry_file = request_and_sign(cli, world, "lab-lyon-08", "lab", "--finess", FINESS)
    lab = world.parties_dir / "lab-lyon-08"
    pseudonym.save_key(lab / "pseudonym.key", pseudonym.new_key())
    result = cli("party", "register", entry_file, "--server", world.url, "--party", lab)
    refused(result, "holds another pseudonym key; refusing to replace it", 2)
    assert not (lab / "entry.json").exists()
    assert world.db("SELECT COUNT(*) FROM parties WHERE name = 'lab-lyon-08'") == [(0,)]

    issued = _lines(world.auth_dir / "issued.jsonl")
    enrol = cli("party", "enroll", lab, "--authority", world.auth_dir, "--server", world.url, "--finess", FINESS)
    refused(enrol, "holds another pseudonym key", 2)
    assert not (lab / "entry.json").exists()
    assert _lines(world.auth_dir / "issued.jsonl") == issued
