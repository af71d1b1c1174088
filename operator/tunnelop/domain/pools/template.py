"""The RelayNode a pool makes from spec.template: its labels, owner reference and template
hash; and whether the template makes valid RelayNodes at all, naming the field when not."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from tunnelop.api.v1alpha1 import API_VERSION, RelayNode, RelayPool, error_messages
from tunnelop.domain.relayview import POOL_LABEL

# Which template a relay was made from, so a roll-out can tell old relays from new ones.
TEMPLATE_HASH_LABEL = "tunnelop.dev/template-hash"
OPERATOR_LABELS = (POOL_LABEL, TEMPLATE_HASH_LABEL)


def template_hash(pool: RelayPool) -> str:
    """A short digest of spec.template: equal templates give equal hashes, whatever the key
    order or defaults in the manifest."""
    template = pool.spec.template.model_dump(mode="json", by_alias=True)
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def pool_selector(pool_name: str) -> str:
    """status.selector: the pool's RelayNodes as a label selector string, for /scale."""
    return f"{POOL_LABEL}={pool_name}"


def owner_reference(pool: RelayPool) -> dict[str, Any]:
    """The pool owns its relays: deleting it lets the garbage collector remove them, and
    blockOwnerDeletion keeps a foreground delete waiting for them."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RelayPool",
        "name": pool.metadata.name,
        "uid": pool.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def relay_labels(pool: RelayPool) -> dict[str, str]:
    labels = dict(pool.spec.template.metadata.labels)
    labels[POOL_LABEL] = pool.metadata.name or ""
    labels[TEMPLATE_HASH_LABEL] = template_hash(pool)
    return labels


def relay_manifest(pool: RelayPool, name: str) -> dict[str, Any]:
    """The RelayNode `name` of the pool, as the object to create."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RelayNode",
        "metadata": {
            "name": name,
            "labels": relay_labels(pool),
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": pool.spec.template.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def template_problems(pool: RelayPool, sample_name: str) -> list[str]:
    """Why the template would make invalid RelayNodes, one line per problem naming the pool's
    field ("spec.template.spec.httpDomain: ..."); empty when it makes valid ones.

    `sample_name` is a name the pool would give (its longest one, to catch a name too long)."""
    problems = []
    given = pool.spec.template.metadata.labels
    for label in OPERATOR_LABELS:
        if label in given:
            problems.append(
                f"spec.template.metadata.labels[{json.dumps(label)}]: set by the operator, "
                "remove it from the template"
            )
    try:
        RelayNode.model_validate(relay_manifest(pool, sample_name))
    except ValidationError as error:
        problems.extend(_in_pool_terms(line) for line in error_messages(error))
    return problems


def _in_pool_terms(line: str) -> str:
    """A RelayNode error as the pool's field: spec.x -> spec.template.spec.x."""
    if line.startswith(("spec.", "spec[", "spec:")):
        return "spec.template." + line
    if line.startswith(("metadata.labels.", "metadata.labels[", "metadata.labels:")):
        return "spec.template." + line
    if line.startswith("metadata"):
        # The relay's name comes from the pool's name.
        return "metadata.name: makes an invalid RelayNode name: " + line.split(": ", 1)[-1]
    return "spec.template: " + line
