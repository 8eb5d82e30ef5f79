"""devtools.local_ray.free_port: ports the kernel will not hand to someone else."""

from __future__ import annotations

import socket

import pytest

from devtools import local_ray
from devtools.local_ray import _RAY_WORKER_PORTS, _ephemeral_ports, free_port


def test_free_ports_are_outside_the_ephemeral_range_and_rays_worker_ports() -> None:
    ephemeral = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert all(p not in ephemeral and p not in _RAY_WORKER_PORTS and 20000 <= p < 65536 for p in ports)
    assert len(set(ports)) > 40  # picked at random, not one fixed port


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first two candidates free_port will try: one held by a listener on
    # 127.0.0.1 (HAProxy binds 0.0.0.0, which that blocks), one free.
    busy, free = free_port(), free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", busy))
        held.listen()
        monkeypatch.setattr(local_ray.random, "sample", lambda population, k: [busy, free])
        assert free_port() == free
