"""The persons index of a sender's breach ledger: who is in which transfer, with what is needed to notify them.

One CSV row per patient record and per prescriber (deduplicated within a batch by RPPS), with the transfers that
carried them. Written as the batch is routed, to a stream that gzips and age-encrypts it to the DPO's key
(``labrelay.client.ledger``): plaintext only in memory and pipes. The NIR is not copied (a letter does not need it);
patients are keyed by their keyed pseudonym when the lab has the pseudonym key.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from labrelay.batch.outputs import ByteStream, csv_bytes
from labrelay.batch.route import ROW_ID, with_pseudonyms

__all__ = ["COLUMNS", "PATIENT", "PROFESSIONAL", "ROW_ID", "PersonsIndexSink"]
COLUMNS = (
    "kind",
    "person",
    "nom",
    "prenom",
    "date_naissance",
    "adresse",
    "code_postal",
    "commune",
    "telephone",
    "email",
    "transfers",
)
PATIENT, PROFESSIONAL = "patient", "professional"


def _text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String).fill_null("")


class PersonsIndexSink:
    """Receives each routed block; writes its persons, with the transfer ids that carried them."""

    def __init__(self, stream: ByteStream, transfer_ids: Mapping[str, str], pseudonym_key: str | None) -> None:
        self.stream = stream
        self.transfer_ids = dict(transfer_ids)  # destination name → transfer id
        self._key = pseudonym_key
        self.patients = 0
        self.professionals = 0
        self._header = False

    def prepare(self, accepted: pl.DataFrame) -> pl.DataFrame:
        """``accepted`` with its rows numbered (``ROW_ID``: ``add`` matches the routed records of this block to
        their rows by it), and its pseudonyms when the lab has the key: computed once here, for the router and the
        persons index both. Reads nothing but its arguments and the key: the pipeline's workers call it at once."""
        numbered = accepted.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW_ID))
        return with_pseudonyms(numbered, self._key) if self._key else numbered

    def add(self, accepted: pl.DataFrame, routed: Mapping[str, pl.DataFrame]) -> None:
        """``accepted`` as ``prepare`` returned it; ``routed`` the router's records per destination."""
        # The transfers carrying each record, in transfer-id order: one membership test per destination.
        carried = sorted(
            (self.transfer_ids[name], frame.get_column(ROW_ID))
            for name, frame in routed.items()
            if frame.height and name in self.transfer_ids
        )
        if not carried:
            return
        transfers = pl.concat_str(
            [pl.when(pl.col(ROW_ID).is_in(ids.implode())).then(pl.lit(tid)) for tid, ids in carried],
            separator=";",
            ignore_nulls=True,
        )
        people = accepted.with_columns(transfers.alias("transfers")).filter(pl.col("transfers") != "")
        person = pl.col("pseudonyme") if "pseudonyme" in people.columns else pl.lit("")
        patients = people.with_columns(person.alias("person")).select(
            pl.lit(PATIENT).alias("kind"),
            _text("person"),
            _text("nom"),
            _text("prenom"),
            pl.col("date_naissance").cast(pl.String).fill_null("").alias("date_naissance"),
            _text("adresse"),
            _text("code_postal"),
            _text("commune"),
            _text("telephone"),
            _text("email"),
            pl.col("transfers"),
        )
        # A prescriber is one person per RPPS; without an RPPS (optional in the template), per name and phone.
        rpps = pl.col("prescripteur_rpps").cast(pl.String).fill_null("")
        who = (
            pl.when(rpps != "")
            .then(rpps)
            .otherwise(
                pl.concat_str([pl.lit("nom:"), _text("prescripteur_nom"), pl.lit("|"), _text("prescripteur_telephone")])
            )
            .alias("person")
        )
        prescribers = (
            people.with_columns(who)
            .filter((pl.col("person") != "nom:|") & pl.col("prescripteur_nom").is_not_null())
            .group_by("person", maintain_order=True)  # in the order first seen: one file gives one index, byte for byte
            .agg(
                pl.col("prescripteur_nom").first(),
                pl.col("prescripteur_telephone").first(),
                pl.col("transfers").str.split(";").explode().unique().sort().str.join(";"),
            )
            .select(
                pl.lit(PROFESSIONAL).alias("kind"),
                pl.col("person"),
                _text("prescripteur_nom").alias("nom"),
                *(pl.lit("").alias(c) for c in ("prenom", "date_naissance", "adresse", "code_postal", "commune")),
                _text("prescripteur_telephone").alias("telephone"),
                pl.lit("").alias("email"),
                pl.col("transfers"),
            )
        )
        block = pl.concat([patients, prescribers])
        self.stream.write(csv_bytes(block, header=not self._header))
        self._header = True
        self.patients += patients.height
        self.professionals += prescribers.height
