"""Render a Slurm batch script for one omni3 tool from ci/slurm/omni3-tool.sbatch.in.

Examples:
  python3 ci/slurm/render.py sft --nodes 2 --gpus-per-node 8 --image /lustre/images/omni3-sft.sqsh \
      --data-dir /lustre/omni3 -o sft.sbatch -- --config valor32k
  sbatch sft.sbatch

  python3 ci/slurm/render.py prep --data-dir /lustre/omni3 -- synth --kind receipts --output datasets/synth_receipts

GPU tools run under torchrun (one per node, --gpus-per-node workers each, c10d rendezvous at the first
node); prep runs once, directly. Everything after `--` is passed to the tool. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("omni3-tool.sbatch.in")
TOOLS = ("prep", "import", "sft", "lora_merge", "adapter_export", "export")
CPU_TOOLS = ("prep",)
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


class RenderError(ValueError):
    """The requested job cannot be rendered (a usage error, exit code 2)."""


def tool_name(value: str) -> str:
    name = value.removeprefix("omni3-").replace("-", "_")
    if name not in TOOLS:
        raise RenderError(f"unknown tool {value!r}; expected one of: {', '.join(TOOLS)}")
    return name


def container_image(value: str) -> str:
    """pyxis takes a squashfs path only when it starts with / or ./; other values are image references."""
    if value.endswith(".sqsh") and not value.startswith(("/", "./")):
        return f"./{value}"
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    if "--" in argv:
        split = argv.index("--")
        argv, tool_args = argv[:split], argv[split + 1 :]
    else:
        tool_args = []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", help="tool folder or image name: " + ", ".join(TOOLS))
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=None, help="default 8 for GPU tools, 0 for prep")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default 8 per GPU, 8 for prep")
    parser.add_argument("--time", default="04:00:00", help="wall-clock limit, Slurm format")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--sbatch", action="append", default=[], help="extra #SBATCH option, e.g. --qos=high")
    parser.add_argument("--image", default=None, help="squashfs path or image reference (default ./omni3-TOOL.sqsh)")
    parser.add_argument("--data-dir", default=None, help="host folder mounted at /data (default ./omni3-data)")
    parser.add_argument("--mount", action="append", default=[], help="extra SRC:DST[:FLAGS] container mount")
    parser.add_argument("--launch", choices=("auto", "torchrun", "direct"), default="auto")
    parser.add_argument("--log-dir", default=".", help="folder of the job's output file")
    parser.add_argument("--output", "-o", default="-", help="file to write (default stdout)")
    args = parser.parse_args(argv)
    args.tool_args = tool_args
    return args


def render(args: argparse.Namespace) -> str:
    tool = tool_name(args.tool)
    image_name = f"omni3-{tool.replace('_', '-')}"
    gpu_tool = tool not in CPU_TOOLS
    gpus = args.gpus_per_node if args.gpus_per_node is not None else (8 if gpu_tool else 0)
    launch = args.launch if args.launch != "auto" else ("torchrun" if gpu_tool else "direct")
    if args.nodes < 1 or gpus < 0:
        raise RenderError("--nodes must be at least 1 and --gpus-per-node at least 0")
    if launch == "direct" and args.nodes != 1:
        raise RenderError(f"{image_name} runs as one process (--launch direct); multi-node jobs need torchrun")
    if launch == "torchrun" and gpus < 1:
        raise RenderError("torchrun needs --gpus-per-node of at least 1")
    if not _TIME.match(args.time):
        raise RenderError(f"--time {args.time!r} is not a Slurm time (e.g. 04:00:00 or 1-00:00:00)")
    for mount in args.mount:
        if ":" not in mount or "," in mount:
            raise RenderError(f"--mount {mount!r} must be SRC:DST[:FLAGS], one per option")
    cpus = args.cpus_per_task if args.cpus_per_task is not None else (8 * max(gpus, 1) if gpu_tool else 8)
    extra = [f"#SBATCH --partition={args.partition}"] if args.partition else []
    extra += [f"#SBATCH --account={args.account}"] if args.account else []
    extra += [f"#SBATCH {option}" for option in args.sbatch]
    data_dir = args.data_dir or str(Path.cwd() / "omni3-data")
    values = {
        "image": image_name,
        "tool_image": image_name,
        "job_name": image_name,
        "nodes": str(args.nodes),
        "gpus_line": f"#SBATCH --gpus-per-node={gpus}" if gpus else "# (no GPUs requested)",
        "cpus_per_task": str(cpus),
        "time": args.time,
        "log_dir": args.log_dir,
        "extra_sbatch": "\n".join(extra) if extra else "# (no further #SBATCH options)",
        "container_image": shlex.quote(container_image(args.image or f"./{image_name}.sqsh")),
        "data_dir": shlex.quote(data_dir),
        "extra_mounts": shlex.quote(",".join(args.mount)),
        "launch": launch,
        "nproc_per_node": str(max(gpus, 1)),
        "module": f"omni3_{tool}",
        "command": image_name,
        "args": " ".join(shlex.quote(arg) for arg in args.tool_args),
    }
    text = TEMPLATE.read_text(encoding="utf-8")
    missing = sorted(set(_PLACEHOLDER.findall(text)) - values.keys())
    if missing:
        raise RenderError(f"template placeholders without a value: {missing}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        script = render(args)
    except RenderError as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(script)
    else:
        Path(args.output).write_text(script, encoding="utf-8")
        Path(args.output).chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
