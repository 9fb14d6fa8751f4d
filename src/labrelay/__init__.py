"""labrelay: an end-to-end encrypted relay for medical-lab results.

The relay stores only age ciphertext sealed to recipients' keys, which it never holds; every request is signed
by a party whose entry the directory authority signed; every payload has a deadline. See docs/architecture.md.
"""

__version__ = "0.1.0"
