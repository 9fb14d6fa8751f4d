"""The pure core: value objects and rules, with no framework, database, network, clock or crypto library.

Everything here takes time as an argument and raises ``labrelay.errors`` exceptions.
"""
