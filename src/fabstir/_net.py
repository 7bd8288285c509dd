"""Listening sockets that the node and the discovery service both bind (bottom layer: imports only errors)."""

from __future__ import annotations

import errno
import socket

from fabstir.errors import ConfigError

__all__ = ["bind_socket"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        ConfigError: the port is in use or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on accepted connections
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use; pick another with --port",
                              code="PORT_IN_USE") from None
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}", code="BIND_FAILED") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
