"""The names tunnelop's Gateway API support shares with users and with the standard: the
controller name, the annotations that place a Gateway, and the condition reasons (those of
sigs.k8s.io/gateway-api v1.6; docs/gateway-api.md lists which are used when)."""

from __future__ import annotations

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
CONTROLLER_NAME = "tunnelop.dev/gateway-controller"

# On a Gateway: the RelayPool or the RelayNode that serves it (instead of, or overriding,
# its GatewayClass's spec.parametersRef).
POOL_ANNOTATION = "tunnelop.dev/pool"
NODE_ANNOTATION = "tunnelop.dev/node"
TUNNELOP_GROUP = "tunnelop.dev"
PARAMETER_KINDS = ("RelayPool", "RelayNode")

# Listener protocol -> the one route kind a listener of it serves, and the Tunnel protocol.
ROUTE_KIND_OF_PROTOCOL = {"TCP": "TCPRoute", "UDP": "UDPRoute"}
TUNNEL_PROTOCOL_OF_KIND = {"TCPRoute": "tcp", "UDPRoute": "udp"}
ROUTE_KINDS = tuple(TUNNEL_PROTOCOL_OF_KIND)
# Gateway API features (names of sigs.k8s.io/gateway-api pkg/features), sorted as the
# standard requires of status.supportedFeatures.
SUPPORTED_FEATURES = ("Gateway", "TCPRoute", "UDPRoute")

# On each Tunnel made for a route: selects them all, and says what it serves.
ROUTE_KIND_LABEL = "tunnelop.dev/route-kind"
GATEWAY_ANNOTATION = "tunnelop.dev/gateway"  # <namespace>/<name>
LISTENER_ANNOTATION = "tunnelop.dev/listener"

# Condition types and reasons.
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"
# GatewayClass and Gateway
INVALID_PARAMETERS = "InvalidParameters"
UNSUPPORTED_ADDRESS = "UnsupportedAddress"
LISTENERS_NOT_VALID = "ListenersNotValid"
INVALID = "Invalid"
PENDING = "Pending"
NO_RESOURCES = "NoResources"
ADDRESS_NOT_ASSIGNED = "AddressNotAssigned"
ADDRESS_NOT_USABLE = "AddressNotUsable"
# Listener
PORT_UNAVAILABLE = "PortUnavailable"
UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
INVALID_ROUTE_KINDS = "InvalidRouteKinds"
NO_CONFLICTS = "NoConflicts"
# Route
NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
NO_MATCHING_PARENT = "NoMatchingParent"
UNSUPPORTED_VALUE = "UnsupportedValue"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
REF_NOT_PERMITTED = "RefNotPermitted"
