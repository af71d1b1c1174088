"""HTTP basic auth, as frps's dashboard and the relay agent's /metrics use it (the relay's
dashboard credentials)."""

from __future__ import annotations

import base64
import binascii
import hmac


def header(user: str, password: str) -> dict[str, str]:
    """The Authorization header for `user:password`."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def matches(authorization: str, user: str, password: str) -> bool:
    """Whether an Authorization header value carries exactly these credentials."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, _, given = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given_user, user) & hmac.compare_digest(given, password)
