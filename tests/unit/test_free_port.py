"""devtools.local_ray.free_port: ports the kernel will not hand to someone else."""

from __future__ import annotations

import socket

from devtools.local_ray import _RAY_WORKER_PORTS, _ephemeral_ports, free_port


def test_free_ports_are_outside_the_ephemeral_range_and_rays_worker_ports() -> None:
    ephemeral = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert all(p not in ephemeral and p not in _RAY_WORKER_PORTS and 20000 <= p < 65536 for p in ports)
    assert len(set(ports)) > 40  # picked at random, not one fixed port


def test_a_port_in_use_is_never_returned() -> None:
    # Hold a listener on every port free_port returns, then ask again: each
    # new answer must differ from every held one.
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            port = free_port()
            assert port not in {s.getsockname()[1] for s in held}
            s = socket.socket()
            s.bind(("0.0.0.0", port))
            s.listen()
            held.append(s)
    finally:
        for s in held:
            s.close()
