"""How far bf16 alone moves the text logits that omni3-import's --verify compares, on the CPU.

omni3-import compares HF NemotronH in bf16 with the Megatron model (fp32 parameters, bf16 autocast) on 2x128 random
token ids. This script runs the HF language model of a built checkpoint three ways on the same ids: fp32 (exact),
fp32 under bf16 autocast (like the Megatron side) and pure bf16 (the HF side), and prints the import's statistics
for each pair. What two numerically different but equivalent forwards disagree by is the floor any limit on that
comparison must clear.

    python ci/dev/import_logit_noise.py --model tiny     # the built-in tiny Omni
    python ci/dev/import_logit_noise.py --model proxy    # the benchmark's Nano-shaped proxy (M*E; 74 s on 2 cores)
    python ci/dev/import_logit_noise.py --hf-path DIR    # any Omni HF checkpoint on disk

Not a GPU result: CPU kernels round differently from cuBLAS, so it bounds the precision noise, it does not replay
the GPU run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from omni3_import.core import hf_language_model, text_ids
from omni3_shared.omni_logits import logit_stats

REPO = Path(__file__).resolve().parents[2]


def build(kind: str, folder: Path) -> Path:
    from omni3_import.tiny_model import build_tiny_omni

    spec = None
    if kind == "proxy":
        from omni3_shared.pytest_plugin import load_script

        bench = load_script(REPO / "tests" / "bench" / "sft.py", "omni3_bench_sft")
        spec = bench.proxy_spec("M*E", 4096)
    build_tiny_omni(folder, spec=spec, vision="omit")
    return folder


def rounded(stats: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 5) if isinstance(value, float) else value for name, value in stats.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "proxy"), default="tiny")
    parser.add_argument("--hf-path", type=Path, help="an Omni HF checkpoint instead of building one")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        hf_path = args.hf_path or build(args.model, Path(scratch) / "hf")
        print(f"[logit-noise] checkpoint ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        model = hf_language_model(hf_path, trust_remote_code=True).float()
        ids = text_ids(hf_path, trust_remote_code=True)
        with torch.no_grad():
            exact = model(ids).logits.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = model(ids).logits.float()
            pure = model.to(torch.bfloat16)(ids).logits.float()
    record = {
        "checkpoint": str(args.hf_path or args.model),
        "torch": torch.__version__,
        "bf16 vs fp32": rounded(logit_stats(exact, pure)),
        "fp32+autocast vs fp32": rounded(logit_stats(exact, autocast)),
        "bf16 vs fp32+autocast (the import's pair)": rounded(logit_stats(autocast, pure)),
    }
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
