"""Binding the node's socket."""

from __future__ import annotations

import socket

import pytest

from fabstir.errors import ConfigError
from fabstir.node.server import bind_socket


def test_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; without it every
    stream stalled about 40 ms after its first token (Nagle plus delayed ACK)."""
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        sock.setblocking(True)
        accepted, _ = sock.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_busy_port() -> None:
    first = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError) as info:
            bind_socket("127.0.0.1", first.getsockname()[1])
        assert info.value.code == "PORT_IN_USE"
    finally:
        first.close()


def test_unbindable_address() -> None:
    with pytest.raises(ConfigError) as info:
        bind_socket("192.0.2.1", 0)  # TEST-NET-1: not an address of this machine, so bind fails at once
    assert info.value.code == "BIND_FAILED"
