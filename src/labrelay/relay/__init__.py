"""The relay's use cases: directory registration, request authentication, transfers, receipts.

Services depend on ``labrelay.ports`` and ``labrelay.crypto`` only; they never see plaintext (there is none on
the relay) and never import storage or HTTP code. ``labrelay.runtime`` wires them to real adapters.
"""
