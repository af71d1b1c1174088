"""Gateway API (sigs.k8s.io/gateway-api v1.6, standard channel) for TCP and UDP: from
GatewayClasses, Gateways, TCPRoutes and UDPRoutes to the Tunnels that serve them and the
statuses the standard defines. Pure: no I/O, no Kubernetes client.

The controller (controllers/gateways.py) reads the objects into views (resources,
observed), calls `translate`, writes the Tunnels it wants (`TunnelWant`) and deletes the
others it made, and writes the statuses `status_merge` builds. docs/gateway-api.md says
what is served and which conditions and reasons are used when.
"""

from tunnelop.domain.gateway.backends import Target
from tunnelop.domain.gateway.observed import RelayState, TunnelSeen
from tunnelop.domain.gateway.resources import (
    GatewayClassView,
    GatewayView,
    Key,
    RouteView,
    ServiceView,
)
from tunnelop.domain.gateway.status_merge import class_status, gateway_status, route_parents
from tunnelop.domain.gateway.translation import (
    GatewayOutcome,
    RouteOutcome,
    Translation,
    TunnelWant,
    World,
    translate,
    tunnel_name,
)
from tunnelop.domain.gateway.vocabulary import (
    API_VERSION,
    CONTROLLER_NAME,
    GATEWAY_ANNOTATION,
    GROUP,
    LISTENER_ANNOTATION,
    NODE_ANNOTATION,
    POOL_ANNOTATION,
    ROUTE_KIND_LABEL,
    ROUTE_KINDS,
)

__all__ = [
    "API_VERSION",
    "CONTROLLER_NAME",
    "GATEWAY_ANNOTATION",
    "GROUP",
    "LISTENER_ANNOTATION",
    "NODE_ANNOTATION",
    "POOL_ANNOTATION",
    "ROUTE_KINDS",
    "ROUTE_KIND_LABEL",
    "GatewayClassView",
    "GatewayOutcome",
    "GatewayView",
    "Key",
    "RelayState",
    "RouteOutcome",
    "RouteView",
    "ServiceView",
    "Target",
    "Translation",
    "TunnelSeen",
    "TunnelWant",
    "World",
    "class_status",
    "gateway_status",
    "route_parents",
    "translate",
    "tunnel_name",
]
