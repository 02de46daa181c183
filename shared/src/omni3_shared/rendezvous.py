"""torch.distributed's rendezvous variables: this process's global rank as the launcher set it, and the variables
for a tool started without torchrun (one process, one GPU)."""

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


def global_rank() -> int:
    """This process's global rank from torchrun's (or Slurm's wiring of) ``RANK``; 0 without a launcher. Readable
    before torch.distributed is initialised, e.g. to print a CLI's warnings once and not once per GPU."""
    return int(os.environ.get("RANK", "0"))
