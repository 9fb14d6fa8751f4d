"""The routing policy as a lab uses it: fetched from the relay, verified against the pinned authority key."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from labrelay.client.api import RelayClient
from labrelay.crypto.envelopes import verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.policy import POLICY_TYPE, Policy, policy_from_payload
from labrelay.errors import UntrustedEntry


def default_policy_text() -> str:
    """The policy shipped with labrelay (labrelay/data/default-policy.toml), for the authority to sign."""
    return resources.files("labrelay.data").joinpath("default-policy.toml").read_text(encoding="utf-8")


def verified_policy(envelope: Mapping[str, Any], authority: VerifyKey) -> Policy:
    """The policy, if the pinned authority signed it; an unsigned or foreign-signed policy is refused."""
    return policy_from_payload(verify_envelope(envelope, POLICY_TYPE, authority, error=UntrustedEntry))


def current_policy(client: RelayClient, authority: VerifyKey) -> Policy:
    return verified_policy(client.policy(), authority)
