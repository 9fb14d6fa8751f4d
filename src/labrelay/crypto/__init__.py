"""All cryptography in labrelay, behind small typed functions (the only package importing crypto libraries).

- ``keys``: Ed25519 signing keys and age X25519 identities, and private key files that refuse loose permissions;
- ``envelopes``: objects signed with a purpose string over their RFC 8785 canonical JSON;
- ``age_stream``: streaming age encryption and decryption that hash the ciphertext on the way;
- ``httpsig``: HTTP Message Signatures (RFC 9421, Ed25519) with Content-Digest (RFC 9530).

Verification raises (``labrelay.errors.SecurityError`` subclasses); it never returns a bool.
"""
