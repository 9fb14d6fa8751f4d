"""Right-to-left overrides and other invisible characters (T40): refused in the text of a lab's records and in
identifiers on input; shown escaped, never obeyed, in what operators read (the console's pages, alerts).

A name holding U+202E (right-to-left override) reads backwards from there on: ``DUP\\u202eTNO`` shows as "DUPONT"
in CNAM's spreadsheet and in a browser; a zero-width space makes two names that look the same differ.
"""

from __future__ import annotations

import sys
import unicodedata
from datetime import timedelta

import polars as pl
import pytest

from labrelay.domain.audit import AuditEvent
from labrelay.domain.names import check_party_name, is_hidden, visible
from labrelay.domain.records import FORMULA_FIELDS, INVISIBLE_RANGES, Reason
from labrelay.errors import UsageError
from labrelay.relay.alerts import Alert
from tests.support.records import V, frame, good
from tests.support.relay_setup import T0, Setup

RLO = "\u202e"
HIDDEN = [
    RLO,
    "\u202a",  # left-to-right embedding
    "\u202d",  # left-to-right override
    "\u2066",  # left-to-right isolate
    "\u2069",  # pop directional isolate
    "\u200e",  # left-to-right mark
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\u200b",  # zero-width space
    "\u200c",
    "\u200d",
    "\u2060",  # word joiner
    "\ufeff",  # zero-width no-break space
    "\U000e0041",  # tag "A"
    "\u009b",  # the 8-bit CSI (a C1 control)
    "\u2028",  # line separator
]


def value_for(field: str, char: str) -> str:
    return f"celine{char}.dupont@example.fr" if field == "email" else f"DUP{char}ONT"


@pytest.mark.threat("T40")
@pytest.mark.parametrize("field", FORMULA_FIELDS)
def test_bidi_controls_and_invisible_characters_are_refused_in_names_and_addresses(field: str) -> None:
    """A lab's record whose identity or address text holds one is refused, with its reason, as a formula is (T27):
    it never reaches CNAM's spreadsheet or an ARS's."""
    result = V.validate(frame(*(good(**{field: value_for(field, char)}) for char in HIDDEN)))
    assert result.accepted.height == 0
    reasons = result.rejections.filter(pl.col("field") == field)["reason"].to_list()
    assert reasons == [Reason.INVISIBLE.value] * len(HIDDEN)


def test_visible_text_in_any_script_is_accepted() -> None:
    names = [
        good(nom="ŒUVRAY", prenom="Zoë", adresse="3 rue de l\u2019Église", commune="L'HAŸ-LES-ROSES"),
        good(nom="N\u2019GUESSAN", prenom="Ngọc Ánh", prescripteur_nom="Dr Müller « Jr »"),
        good(adresse="12\u00a0bis rue X", nom="MARTIN\u202fDUPONT"),  # no-break spaces are visible spaces
        good(nom="محمد", prenom="Ἀλέξανδρος", commune="日本"),
    ]
    result = V.validate(frame(*names))
    assert result.accepted.height == len(names), result.rejections


@pytest.mark.threat("T40")
def test_the_refused_characters_are_every_format_character_and_the_c1_controls() -> None:
    """The list (shared with the browser's validator, so that both refuse the same) is every character of category
    Cf in the Unicode database this Python has (14.0 on 3.11), plus the C1 controls and the line and paragraph
    separators; nothing else."""
    listed = {c for lo, hi in INVISIBLE_RANGES for c in range(lo, hi + 1)}
    format_chars = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"}
    assert listed - format_chars == set(range(0x80, 0xA0)) | {0x2028, 0x2029}
    missing = sorted(hex(c) for c in format_chars - listed)
    assert not missing, f"Unicode {unicodedata.unidata_version} has format characters INVISIBLE_RANGES lacks: {missing}"
    assert all(is_hidden(chr(c)) for c in listed)


def test_names_and_identifiers_admit_none() -> None:
    """Party names (the directory, requests' key ids, audit actors) were ASCII already; verified here."""
    for char in HIDDEN:
        with pytest.raises(UsageError):
            check_party_name(f"lab{char}-paris")


@pytest.mark.threat("T40")
def test_visible_shows_every_hidden_character_as_its_escape() -> None:
    for char in [*HIDDEN, "\x1b", "\r", "\n", "\x00", "\x7f", "\ud800", "\u2029"]:
        shown = visible(f"lab-{char}paris")
        assert char not in shown
        assert shown.startswith("lab-\\")
        assert shown.endswith("paris")
        assert shown.isprintable()
    assert visible(f"DUP{RLO}TNO") == "DUP\\u202eTNO"
    assert visible("x\U000e0041") == "x\\U000e0041"
    for kept in ("Céline « Dédé »", "ŒUVRAY", "日本", "12\u00a0bis", "a\\u202e"):
        assert visible(kept) == kept
    assert visible(visible(f"a{RLO}b\n")) == visible(f"a{RLO}b\n")  # shown once, shown the same


@pytest.mark.threat("T40")
def test_alerts_show_hidden_characters_escaped() -> None:
    """An alert's subject (a claimed name, an address from a header) and summary reach operators' mail, syslog,
    webhooks and console escaped."""
    alert = Alert(
        rule="bad-signatures",
        subject=f"remote:10.0.0.1{RLO}evil",
        at=T0,
        count=20,
        threshold=20,
        window_seconds=60,
        locked=False,
        audit_seq=0,
        summary=f"20 failed authentications from remote:10.0.0.1{RLO}evil\u200b",
    )
    doc = alert.as_doc()
    assert doc["subject"] == "remote:10.0.0.1\\u202eevil"
    assert doc["summary"].endswith("\\u202eevil\\u200b")
    assert alert.subject == doc["subject"]


@pytest.mark.threat("T40")
def test_the_console_shows_hidden_characters_escaped(setup: Setup) -> None:
    """Whatever the relay's database holds that the console's pages render (alert subjects, lock reasons, findings)
    is sent to the page with its hidden characters escaped, so a page cannot be made to show something else."""
    setup.relay.services.auditor.record(
        AuditEvent.ALERT_RAISE, reason="bad-signatures", subject=f"claimed:lab{RLO}-paris", count=20, threshold=20
    )
    setup.relay.sql.control.set_lock("lab-paris", "lock", f"rule{RLO}x", setup.clock.now(), f"by\u200b{RLO}")
    console = setup.relay.services.console
    assert console is not None
    setup.clock.advance(timedelta(seconds=1))
    overview = console.overview()
    [alert] = overview["alerts"]
    assert alert["subject"] == "claimed:lab\\u202e-paris"
    [lock] = overview["locks"]
    assert (lock["reason"], lock["by"]) == ("rule\\u202ex", "by\\u200b\\u202e")
    assert RLO not in repr(overview)
