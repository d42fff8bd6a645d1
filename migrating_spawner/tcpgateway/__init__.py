"""The port-pool TCP gateway: a stable gateway-address:port for any TCP port of a user's
server, kept across moves. HAProxy does the forwarding (haproxy.py); `TCPGateway`
(gateway.py) assigns ports from the pool, drives HAProxy's runtime API and supervises it."""

from .gateway import GatewayError, TCPGateway

__all__ = ["GatewayError", "TCPGateway"]
