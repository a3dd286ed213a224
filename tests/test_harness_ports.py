"""The test harness's port picker: picks made before any is bound never collide."""

from __future__ import annotations

import socket

from harness.ray_head import free_port


def test_free_port_never_hands_out_a_port_twice():
    """Hundreds of picks with nothing bound in between (the kernel readily offers a just-closed port
    again) are all distinct, and each can be bound."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
