"""Breach response for the DPO: scope an incident from the senders' ledgers and the relay's audit export, name the
affected persons with the DPO's key, and draft the GDPR art. 33 notification and art. 34 communications.

Nothing here talks to the relay: the audit export (``labrelay audit export``) is all it needs of it.
"""
