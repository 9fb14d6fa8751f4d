"""What runs on a party's machine: keys, the pinned authority, the signed HTTP client, send, fetch, receipts.

Private keys are created here and never leave. Nothing from the relay is trusted without a check: directory
entries against the pinned authority key, manifests against the sender's entry, payloads against the manifest.
"""
