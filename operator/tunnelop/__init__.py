"""tunnelop: a Kubernetes operator for frp-based tunnel relays."""

__version__ = "0.1.0"
