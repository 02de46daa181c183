"""The scripts that carry the GPU proofs (ci/gpu/, ci/dev/) parse and stop on unset variables and failed pipes.

They run only on lent GPU machines, where a syntax error costs device time; this catches it on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(str(path.relative_to(REPO)) for path in [*REPO.glob("ci/gpu/*.sh"), *REPO.glob("ci/dev/*.sh")])
SOURCED = {"ci/gpu/common.sh"}  # sourced by the others, which set the shell options


def test_the_scripts_are_found() -> None:
    assert {"ci/gpu/run-all.sh", "ci/gpu/session.sh", "ci/gpu/run-layout.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_gpu_script_parses_and_is_strict(script: str) -> None:
    checked = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    if script not in SOURCED:
        lines = (REPO / script).read_text().splitlines()
        assert any(line.startswith("set -") and "u" in line and "pipefail" in line for line in lines), script


def test_triton_autotuning_results_travel_from_one_machine_to_the_next(tmp_path: Path) -> None:
    """pack on one machine, keep here (merging with what was kept), unpack on the next; nothing else travels."""
    script = REPO / "ci" / "gpu" / "triton-cache.sh"
    cache = tmp_path / "machine1-cache"
    (cache / "ABC123").mkdir(parents=True)
    (cache / "ABC123" / "_chunk_scan_fwd.autotune.json").write_text('{"key": [1], "configs_timings": []}')
    (cache / "ABC123" / "_chunk_scan_fwd.cubin").write_bytes(b"\0" * 64)  # compiled code stays behind
    job = tmp_path / "job"
    job.mkdir()

    def run(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True, check=True)
        return done.stdout

    assert "packed 1 " in run("pack", str(cache), str(job / "triton-autotune.tgz"))
    subprocess.run(["tar", "czf", str(tmp_path / "gpu-out.tgz"), "-C", str(job), "."], check=True)
    checkout = tmp_path / "checkout"
    (checkout / ".gpu-triton").mkdir(parents=True)
    earlier = tmp_path / "earlier"
    (earlier / "DEF456").mkdir(parents=True)
    (earlier / "DEF456" / "_unpermute_kernel.autotune.json").write_text("{}")
    run("pack", str(earlier), str(checkout / ".gpu-triton" / "autotune.tgz"))
    assert "holds 2 autotuning results" in run("keep", str(tmp_path / "gpu-out.tgz"), cwd=checkout)

    fresh = tmp_path / "machine2-cache"
    assert "unpacked 2 " in run("unpack", str(checkout / ".gpu-triton" / "autotune.tgz"), str(fresh))
    found = sorted(str(path.relative_to(fresh)) for path in fresh.rglob("*") if path.is_file())
    assert found == ["ABC123/_chunk_scan_fwd.autotune.json", "DEF456/_unpermute_kernel.autotune.json"]
    assert "nothing carried" in run("unpack", str(tmp_path / "absent.tgz"), str(fresh))


def test_a_carried_archive_cannot_write_outside_the_cache(tmp_path: Path) -> None:
    script = REPO / "ci" / "gpu" / "triton-cache.sh"
    evil = tmp_path / "evil"
    (evil / "sub").mkdir(parents=True)
    (evil / "sub" / "x.autotune.json").write_text("{}")
    (tmp_path / "outside.autotune.json").write_text("{}")
    tgz = tmp_path / "evil.tgz"
    subprocess.run(
        ["tar", "czf", str(tgz), "-C", str(evil), "sub/x.autotune.json", "../outside.autotune.json"], check=True
    )
    cache = tmp_path / "cache"
    subprocess.run(["bash", str(script), "unpack", str(tgz), str(cache)], check=True, capture_output=True)
    assert (cache / "sub" / "x.autotune.json").is_file()
    assert sorted(p.name for p in cache.rglob("*")) == ["sub", "x.autotune.json"]


def test_layout_main_selects_the_main_layouts_chain() -> None:
    """run-layout.sh main: the import, both main-layout trainings with their exports; not the reference runs."""
    script = (REPO / "ci" / "gpu" / "run-layout.sh").read_text()
    expression = script.split('MAIN_LAYOUT_ONLY="', 1)[1].split('"', 1)[0]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-k", expression,
         "tests/gpu/test_production_layout.py"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    names = sorted(line.split("::")[1] for line in collected.stdout.splitlines() if "::" in line)
    assert names == [
        "test_adapter_export_of_the_main_lora_run_covers_every_expert",
        "test_export_of_the_main_default_run_has_every_expert",
        "test_import_at_the_main_layout_is_verified",
    ], collected.stdout + collected.stderr
