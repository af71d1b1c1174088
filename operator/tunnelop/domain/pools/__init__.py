"""RelayPool: the RelayNodes a pool should own, its built-in autoscaler and its status.
Pure: no I/O, no Kubernetes client.

The pool controller (controllers/pools.py) turns owned RelayNodes into `member_of` views and
the allocation table's figures into loads; when spec.autoscaling is set, it calls `autoscale`
and keeps its `below_since`; it calls `check_template`, then `plan` (with the autoscaler's
count) and, unless the template has problems, creates `relay_manifest` for each name in
`create`, drains `drain` and `replace`, deletes `delete`; and writes `pool_status`.
"""

from tunnelop.domain.pools.autoscale import (
    SCALE_DOWN_SHARE_PERCENT,
    Demand,
    ScaleDecision,
    autoscale,
    relay_capacity,
    relays_needed,
    utilization_percent,
)
from tunnelop.domain.pools.members import PoolMember, RelayLoad, load_of, member_of
from tunnelop.domain.pools.plan import DEFAULT_MAX_DRAINING, Plan, desired_replicas, plan
from tunnelop.domain.pools.pool_status import (
    INVALID_TEMPLATE,
    READY,
    SCALING,
    check_template,
    pool_status,
)
from tunnelop.domain.pools.relay_names import (
    MAX_POOL_SIZE,
    new_relay_names,
    relay_index,
    relay_name,
)
from tunnelop.domain.pools.template import (
    TEMPLATE_HASH_LABEL,
    owner_reference,
    pool_selector,
    relay_labels,
    relay_manifest,
    template_hash,
    template_problems,
)

__all__ = [
    "DEFAULT_MAX_DRAINING",
    "INVALID_TEMPLATE",
    "MAX_POOL_SIZE",
    "READY",
    "SCALE_DOWN_SHARE_PERCENT",
    "SCALING",
    "TEMPLATE_HASH_LABEL",
    "Demand",
    "Plan",
    "PoolMember",
    "RelayLoad",
    "ScaleDecision",
    "autoscale",
    "check_template",
    "desired_replicas",
    "load_of",
    "member_of",
    "new_relay_names",
    "owner_reference",
    "plan",
    "pool_selector",
    "pool_status",
    "relay_capacity",
    "relay_index",
    "relay_labels",
    "relay_manifest",
    "relay_name",
    "relays_needed",
    "template_hash",
    "template_problems",
    "utilization_percent",
]
