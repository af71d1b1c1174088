"""Generated subdomains for http(s) tunnels that do not ask for one.

Readable first: `blog` in namespace `alice` is served as blog-alice.<httpDomain>. When that
label is too long for DNS or already held, a short hash of the tunnel's key makes it unique;
the same key always gets the same candidates, in the same order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from tunnelop.domain.scheduling.model import TunnelKey

DNS_LABEL_MAX = 63
HASH_LENGTH = 6  # 24 bits: collisions are rare, and resolved by the next candidate
_NOT_IN_LABEL = re.compile(r"[^a-z0-9]+")


def readable_label(text: str) -> str:
    """`text` as lowercase letters, digits and single dashes, without dashes at the ends."""
    return _NOT_IN_LABEL.sub("-", text.lower()).strip("-")


def _short_hash(key: TunnelKey, attempt: int) -> str:
    namespace, name = key
    data = f"{namespace}/{name}/{attempt}".encode()
    return hashlib.sha256(data).hexdigest()[:HASH_LENGTH]


def _with_hash(base: str, key: TunnelKey, attempt: int) -> str:
    suffix = _short_hash(key, attempt)
    head = base[: DNS_LABEL_MAX - HASH_LENGTH - 1].rstrip("-")
    return f"{head}-{suffix}" if head else suffix


def subdomain_candidates(key: TunnelKey) -> Iterator[str]:
    """Valid DNS labels for the tunnel, best first: `name-namespace` when it fits in a label,
    then that label (shortened if needed) with a hash suffix, for ever more attempts."""
    namespace, name = key
    base = readable_label(f"{name}-{namespace}")
    if base and len(base) <= DNS_LABEL_MAX:
        yield base
    attempt = 0
    while True:
        yield _with_hash(base, key, attempt)
        attempt += 1
