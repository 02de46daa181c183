"""What a training run leaves in its run directory besides the checkpoints, and the line it prints per interval.

Layout of a run directory (names are the constants below):

    checkpoints/          Megatron-Bridge checkpoints (iter_NNNNNNN/, tracker files)
    tensorboard/          TensorBoard events (Megatron's own writer)
    metrics.jsonl         one JSON object per logging interval (see ``StepMetrics``)
    run_config.yaml       the resolved omni3 config, settings, world and the Megatron-Bridge field assignments
    loss_throughput.png   loss and tokens/s/GPU against the iteration
    report.md             a short run report
    omni3-manifest.json   written last; ``extra.checkpoint`` names the checkpoint the lifecycle tools consume

Only the standard library, PyYAML and Pillow: this module runs on the CPU and in the tests.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from omni3_shared.progress import format_duration

CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.yaml"
PLOT_FILE = "loss_throughput.png"
REPORT_FILE = "report.md"


def padding_share(tokens: int, positions: int | None) -> float | None:
    """Of the positions the model ran, the share that was padding (None when the positions are unknown)."""
    return 1 - tokens / positions if positions else None


@dataclass(frozen=True)
class StepMetrics:
    """One logging interval: averages over its iterations, measured on rank 0."""

    iteration: int  # the last iteration of the interval
    loss: float
    lr: float
    tokens: int  # the samples' tokens the whole job trained on in the interval (all data-parallel ranks), no padding
    seconds: float  # wall time of the interval
    gpus: int
    flops: float  # model FLOPs of those tokens (model_shape.FlopCounter), whole job
    grad_norm: float | None = None
    data_wait_seconds: float | None = None  # of ``seconds``, rank 0's forward step waiting for the data loader
    positions: int | None = None  # the sequence positions the model ran: ``tokens`` and the padding around them
    sequences: int | None = None  # the samples (rows) of the interval, whole job

    @property
    def padding_share(self) -> float | None:
        return padding_share(self.tokens, self.positions)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens / self.seconds / self.gpus if self.seconds > 0 and self.gpus > 0 else math.nan

    @property
    def tflops_per_gpu(self) -> float:
        return self.flops / self.seconds / self.gpus / 1e12 if self.seconds > 0 and self.gpus > 0 else math.nan

    def record(self) -> dict[str, Any]:
        document = asdict(self)
        document["tokens_per_s_per_gpu"] = _finite(self.tokens_per_s_per_gpu)
        document["tflops_per_gpu"] = _finite(self.tflops_per_gpu)
        if self.padding_share is not None:
            document["padding_share"] = round(self.padding_share, 4)
        return {key: value for key, value in document.items() if value is not None}


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------
# Metrics as JSON lines


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record; a torn last line (the writer was killed mid-write) is left out."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
    return records


class MetricsWriter:
    """Appends one JSON line per interval, flushed at once so a kill loses at most the line being written.

    Opened for a resumed run, it first drops the records after the checkpoint the run restarts from
    (atomically), so the file holds one loss curve with no repeated iterations.
    """

    def __init__(self, path: Path, resume_iteration: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [
                r
                for r in read_metrics(self.path)
                if resume_iteration is not None and r["iteration"] <= resume_iteration
            ]
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            os.replace(temporary, self.path)
        self._handle = self.path.open("a")

    def write(self, metrics: StepMetrics) -> None:
        self._handle.write(json.dumps(metrics.record(), sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# The progress line


def _tflops(value: float) -> str:
    """One decimal from 1 up (312.4 on Nano); below, three significant digits (0.0213 on the tiny model)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def progress_line(metrics: StepMetrics, train_iters: int, seconds_per_iteration: float | None) -> str:
    """``iter 20/100 | loss 1.2345 | lr 1.00e-04 | 1,234 tok/s/GPU | 56.7 TFLOP/s/GPU | ETA 0:01:23``."""
    parts = [
        f"iter {metrics.iteration}/{train_iters}",
        f"loss {metrics.loss:.4f}",
        f"lr {metrics.lr:.2e}",
        f"{metrics.tokens_per_s_per_gpu:,.0f} tok/s/GPU",
        f"{_tflops(metrics.tflops_per_gpu)} TFLOP/s/GPU",
    ]
    if metrics.grad_norm is not None:
        parts.insert(3, f"grad norm {metrics.grad_norm:.3f}")
    if seconds_per_iteration is not None and seconds_per_iteration > 0:
        parts.append(f"ETA {format_duration(max(train_iters - metrics.iteration, 0) * seconds_per_iteration)}")
    else:
        parts.append("ETA after warm-up")
    return " | ".join(parts)


class EtaClock:
    """Seconds per iteration, averaged over the last ``window`` intervals. The first interval is never used: it
    holds the warm-up (model build, Triton autotuning), which made the first line's ETA read 44 minutes for a
    run of 40 seconds (4x H200, 2026-11-27), so there is no estimate until a second interval ends."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._samples: list[tuple[int, float]] = []

    def add(self, iterations: int, seconds: float) -> float | None:
        if iterations > 0 and seconds > 0:
            self._samples.append((iterations, seconds))
            self._samples = self._samples[-self.window - 1 :]
        samples = self._samples[1:]
        total_iterations = sum(n for n, _ in samples)
        return sum(s for _, s in samples) / total_iterations if total_iterations else None


# ---------------------------------------------------------------------------------------------------------------
# run_config.yaml, the report and the manifest's checkpoint entry


def write_run_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as YAML through a temporary file (a reader never sees half of it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(_plain(document), sort_keys=False, width=120))
    os.replace(temporary, path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def checkpoint_entry(save_dir: Path, run_dir: Path, iteration: int | None) -> dict[str, Any]:
    """The manifest's ``extra.checkpoint``: the folder lifecycle tools load and the iteration it holds."""
    entry: dict[str, Any] = {"dir": Path(save_dir).relative_to(run_dir).as_posix(), "format": "torch_dist"}
    if iteration is not None:
        entry["iteration"] = iteration
        entry["path"] = f"{entry['dir']}/iter_{iteration:07d}"
    return entry


@dataclass(frozen=True)
class RunSummary:
    variant: str
    recipe: str
    layout: str
    gpus: int
    train_iters: int
    seq_length: int
    global_batch_size: int
    wall_seconds: float
    checkpoint: Mapping[str, Any]
    resumed_from: int | None = None
    stopped_early: str | None = None  # why the run ended before train_iters (a signal, a time limit)


def summarize_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """First and last loss, and throughput averaged over the intervals after the first (warm-up)."""
    if not records:
        return {}
    steady = list(records[1:]) or list(records)
    tokens = sum(r.get("tokens", 0) for r in steady)
    seconds = sum(r.get("seconds", 0.0) for r in steady)
    flops = sum(r.get("flops", 0.0) for r in steady)
    gpus = records[-1].get("gpus", 1) or 1
    summary: dict[str, Any] = {
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "last_iteration": records[-1]["iteration"],
    }
    if seconds > 0:
        summary["tokens_per_s_per_gpu"] = round(tokens / seconds / gpus, 1)
        summary["tflops_per_gpu"] = round(flops / seconds / gpus / 1e12, 2)
        waits = [r["data_wait_seconds"] for r in steady if r.get("data_wait_seconds") is not None]
        if len(waits) == len(steady):
            summary["data_wait_share"] = round(sum(waits) / seconds, 4)
    positions = [r["positions"] for r in steady if r.get("positions")]
    if positions and len(positions) == len(steady):
        summary["padding_share"] = round(padding_share(tokens, sum(positions)), 4)
    return summary


def render_report(run: RunSummary, records: Sequence[Mapping[str, Any]]) -> str:
    stats = summarize_metrics(records)
    lines = [
        f"# omni3-sft run: {run.variant}",
        "",
        f"- Recipe: `{run.recipe}`; layout {run.layout} on {run.gpus} GPU(s)",
        f"- Sequence length {run.seq_length}, global batch {run.global_batch_size}, {run.train_iters} iterations",
        f"- Wall time {format_duration(run.wall_seconds)}"
        + (f"; resumed from iteration {run.resumed_from}" if run.resumed_from is not None else ""),
    ]
    if run.stopped_early:
        lines.append(f"- Stopped early: {run.stopped_early}")
    if stats:
        lines += [
            f"- Loss {stats['first_loss']:.4f} at the first interval, {stats['last_loss']:.4f} at iteration "
            f"{stats['last_iteration']}",
        ]
        if "tokens_per_s_per_gpu" in stats:
            lines.append(
                f"- Throughput after warm-up: {stats['tokens_per_s_per_gpu']:,.1f} tokens/s/GPU, "
                f"{stats['tflops_per_gpu']:.2f} TFLOP/s/GPU (model FLOPs, see model_shape)"
            )
        if "padding_share" in stats:
            lines.append(
                f"- Padding: {stats['padding_share']:.1%} of the positions the model ran (not counted as tokens or"
                " FLOPs; Megatron-Bridge pads every sequence to model.seq_length when EP or PP is above 1)"
            )
        if "data_wait_share" in stats:
            lines.append(
                f"- Waiting for the data loader: {stats['data_wait_share']:.1%} of the time after warm-up"
                " (raise dataset.num_workers when this is large)"
            )
    else:
        lines.append("- No metrics were recorded")
    checkpoint = run.checkpoint.get("path") or run.checkpoint.get("dir")
    lines += [
        f"- Checkpoint for the next stage: `{checkpoint}`",
        "",
        f"Files: `{METRICS_FILE}`, `{RUN_CONFIG_FILE}`, `{PLOT_FILE}`, `{TENSORBOARD_DIR}/`, `{CHECKPOINTS_DIR}/`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The plot (Pillow, no matplotlib)

WIDTH, HEIGHT = 960, 720
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 30, 40, 50
BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (20, 20, 20)
LOSS_COLOR, THROUGHPUT_COLOR = (31, 119, 180), (214, 39, 40)


def plot(records: Iterable[Mapping[str, Any]], path: Path, title: str = "omni3-sft") -> Path:
    """Loss (top) and tokens/s/GPU (bottom) against the iteration, as a PNG."""
    from PIL import Image, ImageDraw

    rows = sorted(records, key=lambda r: r["iteration"])
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN_LEFT, 10), title, fill=TEXT)
    half = HEIGHT // 2
    loss = [(r["iteration"], r["loss"]) for r in rows if _number(r.get("loss"))]
    speed = [(r["iteration"], r["tokens_per_s_per_gpu"]) for r in rows if _number(r.get("tokens_per_s_per_gpu"))]
    _panel(draw, (0, 0, WIDTH, half), loss, "loss", LOSS_COLOR)
    _panel(draw, (0, half, WIDTH, HEIGHT), speed, "tokens/s/GPU", THROUGHPUT_COLOR)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _panel(
    draw: Any, box: tuple[int, int, int, int], points: list[tuple[float, float]], label: str, color: Any
) -> None:
    left, top, right, bottom = box
    x0, y0 = left + MARGIN_LEFT, top + MARGIN_TOP
    x1, y1 = right - MARGIN_RIGHT, bottom - MARGIN_BOTTOM
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    draw.text((x0, y0 - 16), label, fill=color)
    draw.text(((x0 + x1) // 2 - 20, y1 + 24), "iteration", fill=TEXT)
    if not points:
        draw.text(((x0 + x1) // 2 - 30, (y0 + y1) // 2), "no data", fill=TEXT)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - pad, y_high + pad

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + (x - x_low) / (x_high - x_low) * (x1 - x0),
            y1 - (y - y_low) / (y_high - y_low) * (y1 - y0),
        )

    for step in range(5):
        fraction = step / 4
        y_value = y_low + fraction * (y_high - y_low)
        y_pixel = y1 - fraction * (y1 - y0)
        draw.line((x0, y_pixel, x1, y_pixel), fill=GRID)
        draw.text((left + 8, y_pixel - 6), _tick(y_value), fill=TEXT)
        x_value = x_low + fraction * (x_high - x_low)
        x_pixel = x0 + fraction * (x1 - x0)
        draw.text((x_pixel - 10, y1 + 6), f"{x_value:.0f}", fill=TEXT)
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=color, width=2)
    for px, py in pixels:
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)


def _tick(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e4:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"
