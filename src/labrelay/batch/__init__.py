"""Lab results in bulk: readers (CSV, HL7 v2, FHIR), validation, routing and minimisation, recipient outputs.

Runs on the lab's machine (``labrelay send``, ``labrelay validate``); the relay never imports it, and never sees a
record. Vectorised with polars so that a national day's batch streams through in bounded memory.
"""
