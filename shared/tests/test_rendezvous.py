import os
import socket

import pytest

from omni3_shared.rendezvous import single_process_rendezvous

VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_one_process_gets_a_free_local_port(clean_env: None) -> None:
    single_process_rendezvous()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    with socket.socket() as probe:  # the port is free: torch.distributed's store can bind it
        probe.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))


def test_torchrun_variables_are_left_alone(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29400")
    single_process_rendezvous()
    assert os.environ["MASTER_PORT"] == "29400" and "RANK" not in os.environ
