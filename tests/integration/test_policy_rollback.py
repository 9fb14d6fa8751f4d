"""Routing-policy rollback (T30), through a real relay and the CLI: a relay that serves an older, looser policy the
authority signed before a stricter one gets nothing routed under it; the authority withdraws a version; a batch
routed a moment before a new policy registered is routed again under it, never sent under the old one."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from labrelay.client.api import RelayClient
from labrelay.client.policy import POLICIES_FILE, default_policy_text, verified_withdrawals
from labrelay.client.send import pending
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.policy import PolicyWithdrawal
from labrelay.errors import PermissionDenied
from labrelay.synthetic.generator import write_file
from tests.support.world import World, call_cli, manifest_payload

LOOSE = "fr-covid-2026.3"  # the shipped policy (issue 1 in every world): each ARS receives names and birth dates
STRICT = "fr-covid-2026.4"
STRICT_TEXT = (
    default_policy_text()
    .replace(f'version = "{LOOSE}"', f'version = "{STRICT}"')
    .replace('fields = ["nom", "prenom", "date_naissance", "sexe", "adresse",', 'fields = ["sexe", "adresse",')
)
NAMES = {"nom", "prenom", "date_naissance"}


def results(tmp_path: Path, name: str, seed: int) -> Path:
    source = tmp_path / f"{name}.csv"
    write_file(source, 60, seed=seed, today=datetime.now(UTC).date())
    return source


def publish(world: World, tmp_path: Path, text: str) -> str:
    policy = tmp_path / "policy.toml"
    policy.write_text(text, encoding="utf-8")
    done = call_cli("authority", "publish-policy", policy, "--authority", world.auth_dir, "--server", world.url)
    assert done.code == 0, str(done)
    return done.out


def send(world: World, source: Path) -> object:
    lab = world.party_dir("lab-paris-01")
    return call_cli("send", source, "--as", lab, "--server", world.url, "--to", "cnam", "--to", "ars-11")


def ars_columns(world: World, tmp_path: Path) -> list[set[str]]:
    """The columns of every file ars-11 fetches now (one per payload)."""
    out = tmp_path / f"ars-{new_id()}"
    fetched = call_cli("fetch", "--as", world.party_dir("ars-11"), "--server", world.url, "--out", out)
    assert fetched.code == 0, str(fetched)
    return [set(pl.read_csv(f, infer_schema=False).columns) for f in sorted(out.glob("*.csv"))]


def nothing_for_the_ars_after_a_rollback(world: World, tmp_path: Path) -> bool:
    """No payload waits for ars-11 on the relay; and ars-11, which saw the newer policy, refuses the rolled-back one
    too (it keeps the newest issue it saw: T43), so its fetch says so rather than fetching."""
    waiting = world.db("SELECT id FROM transfers WHERE recipient = 'ars-11' AND state IN ('uploading', 'available')")
    out = tmp_path / f"ars-{new_id()}"
    fetched = call_cli("fetch", "--as", world.party_dir("ars-11"), "--server", world.url, "--out", out)
    assert fetched.code == 3, str(fetched)
    assert "(a rollback)" in fetched.err
    return waiting == []


@pytest.mark.threat("T30")
@pytest.mark.scaled("policies ordered by their issue in PostgreSQL, whichever replica answers")
def test_a_relay_serving_an_older_looser_policy_gets_nothing_routed_under_it(world: World, tmp_path: Path) -> None:
    """The authority publishes a stricter policy (issue 2: no names or birth dates for the ARS); the lab routes under
    it. A compromised relay then serves the looser one again (issue 1, genuinely signed by the authority, by
    deleting the newer from its database): the lab refuses it, naming both, and the ARS gets nothing."""
    assert "fr-covid-2026.4 (issue 2) published" in publish(world, tmp_path, STRICT_TEXT)
    first = send(world, results(tmp_path, "a", 1))
    assert first.code == 0, str(first)
    assert f"policy {STRICT}" in first.out
    [columns] = ars_columns(world, tmp_path)
    assert not columns & NAMES
    kept = world.party_dir("lab-paris-01") / POLICIES_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert [k["issue"] for k in json.loads(kept.read_text())["authorities"].values()] == [2]

    world.db("DELETE FROM policies WHERE version = :v", v=STRICT)  # A2: the relay rolls its policy back
    refused = send(world, results(tmp_path, "b", 2))
    assert refused.code == 3, str(refused)
    assert f"{LOOSE} (issue 1)" in refused.err
    assert f"{STRICT} (issue 2)" in refused.err
    assert "rollback" in refused.err
    assert nothing_for_the_ars_after_a_rollback(world, tmp_path)  # nothing routed under the looser policy
    assert pending(world.parties["lab-paris-01"]) == []


@pytest.mark.threat("T30")
def test_the_authority_withdraws_a_version_and_neither_labs_nor_the_relay_route_under_it(
    world: World, tmp_path: Path
) -> None:
    withdrawn = call_cli(
        "authority", "withdraw-policy", LOOSE, "--authority", world.auth_dir, "--server", world.url,
        "--reason", "names to the ARS",
    )  # fmt: skip
    assert withdrawn.code == 0, str(withdrawn)
    with world.client("lab-paris-01") as client:
        served = client.policy_withdrawals()
    assert [w.version for w in verified_withdrawals(served, world.authority.public)] == [LOOSE]

    refused = send(world, results(tmp_path, "a", 3))
    assert refused.code == 3, str(refused)
    assert "withdrawn by the authority (names to the ARS)" in refused.err

    # A client that does not check (or an older one) is refused by the relay too, before anything is stored.
    lab, ars = world.parties["lab-paris-01"], world.parties["ars-11"]
    manifest = manifest_payload(lab, ars, LOOSE)
    with world.client(lab.name) as client, pytest.raises(PermissionDenied, match="withdrawn by the authority"):
        client.create_transfer(lab.sign(manifest))
    reasons = world.db("SELECT reason FROM audit_events WHERE event = 'transfer:refuse'")
    assert ("permission-denied",) in reasons

    publish(world, tmp_path, STRICT_TEXT)
    sent = send(world, results(tmp_path, "b", 4))
    assert sent.code == 0, str(sent)
    assert f"policy {STRICT}" in sent.out


@pytest.mark.threat("T30")
def test_a_batch_routed_just_before_a_new_policy_registered_is_routed_again_under_it(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the lab verified the looser policy, routed and sealed its batch, and the authority registers the
    stricter one before the first upload (the hook below only times the registration; the send, the relay and the
    signatures are the real ones). The relay refuses the manifests naming the superseded policy; the lab verifies
    for itself that it was superseded, discards the sealed payloads and routes the file again under the new
    policy: the ARS never receives what the old policy gave it."""
    from labrelay.client import routed  # noqa: PLC0415

    real_upload = routed.upload_batch
    registered: list[str] = []

    def upload_after_a_new_policy(*args: object, **kwargs: object) -> object:
        if not registered:  # the authority, meanwhile, on its own machine (the CLI is busy with the send)
            envelope = world.authority.sign_policy(STRICT_TEXT, datetime.now(UTC))
            with RelayClient(world.url, AUTHORITY_KEYID, world.authority.key, SystemClock(), retries=0) as client:
                registered.append(client.register_policy(envelope)["version"])
        return real_upload(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(routed, "upload_batch", upload_after_a_new_policy)
    source = results(tmp_path, "a", 5)
    sent = send(world, source)
    assert registered == [STRICT], "the new policy was registered between routing and upload"
    assert sent.code == 0, str(sent)
    assert f"policy {STRICT}" in sent.out
    [columns] = ars_columns(world, tmp_path)
    assert not columns & NAMES
    lab = world.parties["lab-paris-01"]
    assert pending(lab) == []  # the payloads sealed under the superseded policy are gone
    index = json.loads(next((lab.path / "batches").glob("*.json")).read_text())
    assert len(index["batches"]) == 1  # the first batch forgotten; the source was sent once, under the new policy
    again = send(world, source)
    assert again.code == 0, str(again)
    assert ars_columns(world, tmp_path) == []  # sending the file again sends nothing twice


@pytest.mark.slow
@pytest.mark.threat("T30")
def test_the_lab_page_refuses_an_expired_withdrawn_or_older_policy(world: World, tmp_path: Path, open_tab) -> None:
    """The browser checks the policy as the CLI does: its validity, the withdrawals (each verified), and, when the
    lab's policies.json is among the files chosen, a policy older than the newest the lab verified."""
    authority_pem = world.pub.read_text()
    with world.client("lab-paris-01") as client:
        shipped = client.policy()
    tab = open_tab(world.url)
    tab.goto("/lab?lang=en")

    def check(envelope: dict, withdrawals: tuple = (), kept: dict | None = None, now_ms: int | None = None) -> str:
        return str(
            tab.page.evaluate(
                "([e, w, pem, k, n]) => globalThis.labrelay.checkPolicy(e, w, pem, k, n ?? undefined)",
                [envelope, list(withdrawals), authority_pem, kept, now_ms],
            )
        )

    assert check(shipped) == f"ok {LOOSE}"
    end = datetime.fromisoformat(shipped["payload"]["not_after"].replace("Z", "+00:00"))
    assert "expired" in check(shipped, now_ms=int(end.timestamp() * 1000))
    withdrawal = PolicyWithdrawal(LOOSE, datetime.now(UTC), "names to the ARS", new_id()).to_payload()
    signed = sign_envelope(withdrawal, world.authority.key, AUTHORITY_KEYID)
    assert "withdrawn by the authority (names to the ARS)" in check(shipped, (signed,))
    forged = sign_envelope(withdrawal, SigningKey.generate(), AUTHORITY_KEYID)
    assert not check(shipped, (forged,)).startswith("ok")

    # The lab verified the stricter policy (the CLI keeps it in policies.json); the relay rolls back to the looser.
    publish(world, tmp_path, STRICT_TEXT)
    assert send(world, results(tmp_path, "a", 6)).code == 0
    assert len(ars_columns(world, tmp_path)) == 1  # fetched: the ARS's inbox is empty again
    lab_dir = world.party_dir("lab-paris-01")
    kept = json.loads((lab_dir / POLICIES_FILE).read_text())["authorities"][world.authority.public.b64]
    assert f"older than {STRICT} (issue 2)" in check(shipped, kept=kept)
    world.db("DELETE FROM policies WHERE version = :v", v=STRICT)
    files = [str(lab_dir / f) for f in ("party.json", "signing.key", "authority.pub", "pseudonym.key", POLICIES_FILE)]
    tab.page.set_input_files("#party-files", files)
    tab.page.set_input_files("#results-file", str(results(tmp_path, "b", 7)))
    refused = tab.submit("#send", "error")
    assert "rollback" in refused
    assert nothing_for_the_ars_after_a_rollback(world, tmp_path)
