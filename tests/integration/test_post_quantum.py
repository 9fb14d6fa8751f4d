"""Post-quantum recipients (T43), through a real relay and the CLI: the shipped policy requires hybrid ML-KEM-768 +
X25519 keys (``require_pq``); a classic key is refused at enrolment, at send time and at fetch time, each with exit 3
and one line; ``party rotate --pq`` moves a classic recipient over, and the directory shows who is still classic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Party
from labrelay.client.policy import default_policy_text
from labrelay.client.send import pending
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import PartyEntry, Role, is_pq_recipient
from labrelay.errors import ClassicKeyRefused
from labrelay.synthetic.generator import write_file
from tests.support.world import World, call_cli, manifest_payload

PQ_VERSION = "fr-covid-2026.3-pq"
PQ_TEXT = default_policy_text().replace('version = "fr-covid-2026.3"', f'version = "{PQ_VERSION}"')
CLASSIC_ARS = "ars-84"  # Auvergne-Rhône-Alpes: about one resident in eight of a synthetic batch


def results(tmp_path: Path, name: str, seed: int, records: int = 200) -> Path:
    source = tmp_path / f"{name}.csv"
    write_file(source, records, seed=seed, today=datetime.now(UTC).date())
    return source


def publish(world: World, tmp_path: Path, text: str) -> None:
    policy = tmp_path / f"policy-{new_id()}.toml"
    policy.write_text(text, encoding="utf-8")
    done = call_cli("authority", "publish-policy", policy, "--authority", world.auth_dir, "--server", world.url)
    assert done.code == 0, str(done)


def send(world: World, source: Path) -> object:
    lab = world.party_dir("lab-paris-01")
    return call_cli("send", source, "--as", lab, "--server", world.url, "--to", "cnam", "--to", CLASSIC_ARS)


def fetch(world: World, name: str, out: Path) -> object:
    return call_cli("fetch", "--as", world.party_dir(name), "--server", world.url, "--out", out)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def transfers_to(world: World, name: str) -> int:
    return len(world.db("SELECT id FROM transfers WHERE recipient = :r", r=name))


@pytest.mark.threat("T43")
@pytest.mark.scaled("a 1,959-character hybrid key enrolled in PostgreSQL (migration 0008); a classic one refused")
def test_a_classic_key_is_refused_at_enrolment_under_the_shipped_policy(world: World, tmp_path: Path) -> None:
    out = tmp_path / "new"
    made = call_cli(
        "party", "new", "ars-93", "--role", "recipient", "--region", "11", "--classic",
        "--authority", world.pub, "--out", out,
    )  # fmt: skip
    assert made.code == 0, str(made)
    assert "age key:       classic" in made.out
    refused = call_cli("party", "enroll", out / "ars-93", "--authority", world.auth_dir, "--server", world.url)
    assert refused.code == 3, str(refused)
    line = one_line(refused.err)
    assert "requires post-quantum recipients" in line
    assert "ars-93" in line
    assert "party rotate --pq" in line
    assert world.db("SELECT name FROM parties WHERE name = 'ars-93'") == []

    # The authority refused to sign it, offline; an entry it signed anyway (an older labrelay, or signed before the
    # policy switch) is refused by the relay too, whoever carries it.
    classic = Party.load(out / "ars-93")
    now = datetime.now(UTC)
    entry = PartyEntry(
        name=classic.name,
        role=Role.RECIPIENT,
        region="11",
        age_recipient=classic.age_recipient,
        signing_key=classic.signing_public,
        not_before=now,
        not_after=now + timedelta(days=30),
        issued_at=now,
        serial=new_id(),
    )
    envelope = sign_envelope(entry.to_payload(), world.authority.key, AUTHORITY_KEYID)
    admin = RelayClient(world.url, AUTHORITY_KEYID, world.authority.key, SystemClock(), retries=0)
    with admin as client, pytest.raises(ClassicKeyRefused, match="requires post-quantum recipients"):
        client.register_entry(envelope)
    assert world.db("SELECT name FROM parties WHERE name = 'ars-93'") == []

    # The positive control: the same party with the default key enrols.
    made = call_cli(
        "party", "new", "ars-94", "--role", "recipient", "--region", "11", "--authority", world.pub, "--out", out
    )
    assert "age key:       post-quantum" in made.out
    enrolled = call_cli("party", "enroll", out / "ars-94", "--authority", world.auth_dir, "--server", world.url)
    assert enrolled.code == 0, str(enrolled)


@pytest.mark.threat("T43")
def test_a_classic_recipient_enrolled_before_require_pq_is_refused_at_send_and_at_fetch(
    world: World, tmp_path: Path
) -> None:
    world.allow_classic_keys()  # issue 2: classic keys allowed, as before the switch
    world.add(CLASSIC_ARS, Role.RECIPIENT, "84", classic=True)
    sent = send(world, results(tmp_path, "before", 1))
    assert sent.code == 0, str(sent)
    waiting = transfers_to(world, CLASSIC_ARS)
    assert waiting == 1  # sealed to its classic key while the policy allowed it

    publish(world, tmp_path, PQ_TEXT)  # issue 3: require_pq again
    before = len(world.db("SELECT id FROM transfers"))
    refused = send(world, results(tmp_path, "after", 2))
    assert refused.code == 3, str(refused)
    line = one_line(refused.err)
    assert f"policy {PQ_VERSION} requires post-quantum recipients" in line
    assert f"the age key of {CLASSIC_ARS} is classic" in line
    assert "nothing was sent" in line
    assert "party rotate --pq" in line
    assert len(world.db("SELECT id FROM transfers")) == before  # nothing sealed, nothing uploaded
    assert pending(world.parties["lab-paris-01"]) == []

    # A lab client that does not check is refused by the relay, before anything is stored.
    lab, ars = world.parties["lab-paris-01"], world.parties[CLASSIC_ARS]
    manifest = manifest_payload(lab, ars, PQ_VERSION)
    with world.client(lab.name) as client, pytest.raises(ClassicKeyRefused, match="requires post-quantum"):
        client.create_transfer(lab.sign(manifest))
    assert transfers_to(world, CLASSIC_ARS) == waiting

    # The classic recipient itself: refused before anything is downloaded; its waiting payload stays unopened.
    out = tmp_path / "ars-out"
    fetched = fetch(world, CLASSIC_ARS, out)
    assert fetched.code == 3, str(fetched)
    line = one_line(fetched.err)
    assert f"the age key of {CLASSIC_ARS} is classic" in line
    assert "refusing to fetch" in line
    assert not any(p.suffix == ".csv" for p in out.rglob("*"))


@pytest.mark.threat("T43")
def test_rotate_pq_moves_a_classic_recipient_and_what_was_sealed_to_its_old_key_still_opens(
    world: World, tmp_path: Path
) -> None:
    world.allow_classic_keys()
    world.add(CLASSIC_ARS, Role.RECIPIENT, "84", classic=True)
    assert send(world, results(tmp_path, "old", 3)).code == 0
    publish(world, tmp_path, PQ_TEXT)

    listed = call_cli("directory", "--as", world.party_dir("cnam"), "--server", world.url)
    assert listed.code == 0, str(listed)
    kinds = {line.split()[0]: line.split()[5] for line in listed.out.splitlines()}
    assert kinds[CLASSIC_ARS] == "classic"
    assert {k for n, k in kinds.items() if n != CLASSIC_ARS} == {"post-quantum"}
    assert f"still have a classic (X25519) age key: {CLASSIC_ARS}" in listed.err

    ars_dir = world.party_dir(CLASSIC_ARS)
    old = json.loads((ars_dir / "party.json").read_text())["age_recipient"]
    rotated = call_cli("party", "rotate", ars_dir, "--pq", "--authority", world.auth_dir, "--server", world.url)
    assert rotated.code == 0, str(rotated)
    assert "now receives at a post-quantum key" in rotated.out
    new = json.loads((ars_dir / "party.json").read_text())["age_recipient"]
    assert is_pq_recipient(new)
    assert not is_pq_recipient(old)
    held = {i.recipient for i in AgeIdentity.load_all(ars_dir / "identity.txt")}
    assert held == {old, new}  # the old key is kept while payloads sealed to it may arrive
    listed = call_cli("directory", "--as", world.party_dir("cnam"), "--server", world.url)
    assert "classic" not in listed.out
    assert listed.err == ""

    assert send(world, results(tmp_path, "new", 4)).code == 0
    out = tmp_path / "ars-out"
    fetched = fetch(world, CLASSIC_ARS, out)
    # Both are opened: the payload sealed to the classic key before the switch (its key kept for it), and the new
    # one sealed to the hybrid key. Refusing the old one would lose results and protect nothing: its ciphertext is
    # on the relay already (a payload sealed to a classic key after the switch is refused: tests/unit).
    assert fetched.code == 0, str(fetched)
    assert len(list(out.glob("*.csv"))) == 2


@pytest.mark.threat("T43")
def test_a_relay_that_hides_the_policy_requiring_pq_from_a_recipient_is_refused(world: World, tmp_path: Path) -> None:
    """A2 rolls back the policy a recipient fetches under (to one without require_pq), or serves none at all, so
    that it opens what was sealed to a classic key: the recipient kept the newest issue it saw and refuses."""
    world.allow_classic_keys()
    publish(world, tmp_path, PQ_TEXT)  # issue 3
    out = tmp_path / "cnam-out"
    assert fetch(world, "cnam", out).code == 0  # cnam sees issue 3, and keeps it
    world.db("DELETE FROM policies WHERE version = :v", v=PQ_VERSION)  # A2: issue 2 (no require_pq) is served
    rolled = fetch(world, "cnam", out)
    assert rolled.code == 3, str(rolled)
    line = one_line(rolled.err)
    assert "older than" in line
    assert "(a rollback)" in line
    world.db("DELETE FROM policies")  # A2: no policy at all
    none = fetch(world, "cnam", out)
    assert none.code == 3, str(none)
    assert f"the relay serves no routing policy, but this party verified {PQ_VERSION} (issue 3)" in one_line(none.err)
