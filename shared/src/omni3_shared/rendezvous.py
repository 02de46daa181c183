"""torch.distributed's rendezvous variables for a tool started without torchrun (one process, one GPU)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A local TCP port nobody listens on now (the OS picks it), for a rendezvous apart from other runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def single_process_rendezvous() -> None:
    """Without torchrun (``python -m omni3_<tool>``), give torch.distributed the variables it reads, on a free
    port, so that tools run side by side on one machine do not collide. Under torchrun nothing changes."""
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    )
