"""The routing policy (refused at load when it gives nothing or everything) and routing with minimisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labrelay.batch.route import HELD_RECIPIENT, Router, _names_folded, normalised_trait, pseudonym_input
from labrelay.client.policy import default_policy_text, verified_policy
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.crypto.pseudonym import hmac_hex, new_key
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.policy import PolicyError, parse_policy, policy_payload
from labrelay.domain.records import DIRECT_IDENTIFIERS, FIELDS, Reason, normalise_trait
from labrelay.errors import UntrustedEntry, UsageError
from tests.support.records import V, frame, good

DEFAULT = parse_policy(default_policy_text())
REGIONS = ["11", "84", "94"]
T = datetime(2026, 11, 28, tzinfo=UTC)


def policy_with(recipients: str, loinc: str = '["94500-6"]') -> str:
    return f'version = "t-1"\nloinc = {loinc}\n' + recipients


EVERYTHING = ", ".join(f'"{f}"' for f in FIELDS)


@pytest.mark.threat("T13")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (policy_with(""), "gives nothing"),
        (policy_with('[[recipients]]\nname = "cnam"\nfields = []\n'), "receives no field"),
        (
            policy_with(
                f'[[recipients]]\nname = "cnam"\nfields = [{EVERYTHING}]\n[[recipients]]\nname = "spf"\n'
                f"fields = [{EVERYTHING}]\n"
            ),
            "everything to everyone",
        ),
        (
            policy_with('[[recipients]]\nname = "spf"\npseudonymise = true\nfields = ["pseudonyme", "nir"]\n'),
            "would receive",
        ),
        (policy_with('[[recipients]]\nname = "spf"\nfields = ["pseudonyme"]\n'), "only when pseudonymise"),
        (policy_with('[[recipients]]\nname = "cnam"\nfields = ["salary"]\n'), "unknown fields"),
        (policy_with('[[recipients]]\nname = "ars-{region}"\nfields = ["nom"]\n'), "by_region"),
        (policy_with('[[recipients]]\nname = "cnam"\nselect = "some"\nfields = ["nom"]\n'), "select"),
        (policy_with('[[recipients]]\nname = "cnam"\nfields = ["nom"]\n', "[]"), "loinc"),
        ('version = "x"\nloinc = ["94500-6"]\nsurprise = 1\n', "unknown keys"),
        ("not toml = = =", "TOML"),
    ],
)
def test_bad_policies_are_refused_at_load(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_the_default_policy() -> None:
    assert DEFAULT.version == "fr-covid-2026.3"
    rules = {r.name: r for r in DEFAULT.recipients}
    assert rules["cnam"].select == "positive"
    assert "nir" in rules["cnam"].fields
    assert "nir" not in rules["ars-{region}"].fields
    assert rules["ars-{region}"].by_region
    assert not set(rules["spf"].fields) & DIRECT_IDENTIFIERS
    assert {"adresse", "telephone", "email"}.isdisjoint(rules["spf"].fields)


@pytest.mark.threat("T13")
def test_an_unsigned_or_foreign_signed_policy_is_refused() -> None:
    authority, rogue = SigningKey.generate(), SigningKey.generate()
    payload = policy_payload(default_policy_text(), T, issue=1, not_after=T + timedelta(days=365))
    good_envelope = sign_envelope(payload, authority, AUTHORITY_KEYID)
    assert verified_policy(good_envelope, authority.public).version == DEFAULT.version
    with pytest.raises(UntrustedEntry):
        verified_policy(sign_envelope(payload, rogue, AUTHORITY_KEYID), authority.public)
    with pytest.raises(UntrustedEntry):
        verified_policy({k: v for k, v in good_envelope.items() if k != "sig"}, authority.public)
    lax = default_policy_text().replace('select = "positive"', 'select = "all"')
    with pytest.raises(UntrustedEntry):  # the text was changed after signing
        verified_policy({**good_envelope, "payload": {**payload, "toml": lax}}, authority.public)


def accepted(*records: dict[str, str]) -> pl.DataFrame:
    return V.validate(frame(*records)).accepted


@pytest.mark.threat("T14")
def test_routing_gives_each_recipient_only_its_share() -> None:
    rows = accepted(
        good(resultat="POSITIF"),  # Paris (11)
        good(resultat="NEGATIF", code_commune_insee="69381", code_postal="69001"),  # Lyon (84)
        good(resultat="POSITIF", code_commune_insee="2A004", code_postal="20000"),  # Ajaccio (94)
    )
    router = Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11", "ars-84", "ars-94"}, pseudonym_key=new_key())
    out, review = router.route(rows)
    assert review.height == 0
    assert out["cnam"].height == 2
    assert set(out["cnam"]["resultat"].to_list()) == {"POSITIF"}
    assert [out[f"ars-{r}"].height for r in REGIONS] == [1, 1, 1]
    assert "nir" not in out["ars-11"].columns
    assert out["spf"].height == 3
    assert set(out["spf"].columns) == {
        "pseudonyme",
        "age",
        "sexe",
        "code_commune_insee",
        "date_prelevement",
        "date_validation",
        "code_loinc",
        "resultat",
    }


@pytest.mark.threat("T14")
def test_pseudonyms_are_keyed_hmacs_of_normalised_traits() -> None:
    key = new_key()
    rows = accepted(
        good(nom="Dupont", prenom="Céline"),
        good(nom="DUPONT", prenom="CELINE"),
        good(nom="DU-PONT", prenom="céline "),
        good(nom="DUPOND", prenom="Céline"),
    )
    router = Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11"}, pseudonym_key=key)
    spf = router.route(rows)[0]["spf"]["pseudonyme"].to_list()
    assert spf[0] == spf[1] == spf[2] != spf[3]
    assert spf[0] == hmac_hex(key, f"{normalise_trait('Dupont')}|{normalise_trait('Céline')}|1979-03-15")
    other = Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11"}, pseudonym_key=new_key()).route(rows)[0]["spf"]
    assert other["pseudonyme"][0] != spf[0]  # another key, another pseudonym: no key, no linkage


@pytest.mark.parametrize("text", ["Céline", "O'Brien-Smith", "  jean noël  ", "ÆØÅ ßø", "Ǆ", "123 ÉCOLE"])
def test_vectorised_normalisation_matches_the_reference(text: str) -> None:
    got = pl.DataFrame({"t": [text]}).select(normalised_trait(pl.col("t"))).item()
    assert got == normalise_trait(text)


NAME_TEXT = st.text(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x24F, exclude_characters="\x7f"),  # the Latin table
        # anything else: the general path. Not characters this Python's Unicode database does not know yet (Cn):
        # polars' newer tables decompose some (U+1CCD6, an outlined A, is "A" to polars, unassigned to Python 3.11),
        # so the reference and the vectorised path cannot agree on them (docs/notes.md).
        st.characters(blacklist_categories=("Cs", "Cc", "Cn")),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAME_TEXT, NAME_TEXT), min_size=1, max_size=5))
def test_both_normalisation_paths_match_the_reference(names: list[tuple[str, str]]) -> None:
    """The Latin fold table and the general Unicode path both give exactly the reference's ``NOM|PRENOM``, whether a
    batch is all Latin or mixes in other scripts."""
    rows = pl.DataFrame(
        {"nom": [n for n, _ in names], "prenom": [p for _, p in names]},
        schema=dict.fromkeys(["nom", "prenom"], pl.String),
    )
    expected = [f"{normalise_trait(n)}|{normalise_trait(p)}" for n, p in names]
    assert _names_folded(rows).to_list() == expected


def test_pseudonym_input_is_name_first_name_and_birth_date() -> None:
    rows = accepted(good(nom="Dupont", prenom="Céline"))
    assert rows.select(pseudonym_input()).item() == "DUPONT|CELINE|1979-03-15"


def test_only_the_share_of_an_ars_not_enrolled_is_held() -> None:
    """A resident of a region whose ARS is not enrolled still reaches CNAM (a positive) and SpF; only the ARS's
    share is held, naming the missing recipient."""
    rows = accepted(
        good(),  # Paris (11)
        good(code_commune_insee="69381", code_postal="69001"),  # Lyon (84)
        good(code_commune_insee="2A004", code_postal="20000", resultat="NEGATIF"),  # Ajaccio (94)
        good(code_commune_insee="69381", code_postal="69001", resultat="NEGATIF"),
    )
    router = Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11"}, pseudonym_key=new_key())
    assert router.missing == ["ars-84", "ars-94"]
    out, held = router.route(rows)
    assert sorted(held.select("_record", HELD_RECIPIENT, "_reason").rows()) == [
        (2, "ars-84", Reason.NO_RECIPIENT.value),
        (3, "ars-94", Reason.NO_RECIPIENT.value),
        (4, "ars-84", Reason.NO_RECIPIENT.value),
    ]
    assert out["spf"].height == 4
    assert out["cnam"].height == 2
    assert out["ars-11"].height == 1


def test_a_territory_no_ars_covers_holds_only_its_regional_share() -> None:
    rows = accepted(good(), good(code_commune_insee="97501", code_postal="97500"))  # Saint-Pierre-et-Miquelon
    out, held = Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11", "ars-84", "ars-94"}, pseudonym_key=new_key()).route(
        rows
    )
    assert held.select("_record", "_reason", HELD_RECIPIENT).rows() == [(2, Reason.NO_REGION.value, "")]
    assert out["cnam"].height == out["spf"].height == 2
    # A send restricted on purpose addresses no regional share of it: nothing is held.
    _, held = Router(DEFAULT, REGIONS, {"cnam"}, restrict=["cnam"]).route(rows)
    assert held.height == 0


def test_restriction_and_refusals() -> None:
    rows = accepted(good(), good(resultat="NEGATIF"))
    out, _ = Router(DEFAULT, REGIONS, {"cnam"}, restrict=["cnam"]).route(rows)
    assert list(out) == ["cnam"]
    with pytest.raises(UsageError, match="not a recipient under policy"):
        Router(DEFAULT, REGIONS, {"cnam"}, restrict=["lab-x"])
    with pytest.raises(UsageError, match="spf, which is not enrolled"):
        Router(DEFAULT, REGIONS, {"cnam", "ars-11"}, pseudonym_key=new_key())
    with pytest.raises(UsageError, match="no pseudonym key"):
        Router(DEFAULT, REGIONS, {"cnam", "spf", "ars-11"})


def test_unparsed_documents_only_where_the_policy_says() -> None:
    assert DEFAULT.unparsed_refusal("cnam") is None
    assert "pseudonymised records" in (DEFAULT.unparsed_refusal("spf") or "")
    assert "never unparsed" in (DEFAULT.unparsed_refusal("ars-11") or "")
    assert "not a recipient" in (DEFAULT.unparsed_refusal("lab-x") or "")
    assert "not a recipient" in (DEFAULT.unparsed_refusal("ars-x1") or "")
    with pytest.raises(PolicyError, match="cannot receive unparsed"):
        parse_policy(
            policy_with('[[recipients]]\nname = "spf"\npseudonymise = true\nunparsed = true\nfields = ["pseudonyme"]\n')
        )
    with pytest.raises(PolicyError, match="true or false"):
        parse_policy(policy_with('[[recipients]]\nname = "cnam"\nunparsed = "yes"\nfields = ["nom"]\n'))


def test_policy_payload_carries_its_version() -> None:
    payload = policy_payload(default_policy_text(), T, issue=3, not_after=T + timedelta(days=365))
    assert payload["version"] == DEFAULT.version
