"""Built-in synthetic data, made offline and deterministically from a seed.

Two kinds, each small enough for CI and made of real files:

- ``receipts``: receipt images (PNG in Energon datasets, JPEG in the raw CORD-style parquet) with their
  CORD-v2-style ground truth (``gt_parse`` with menu, sub_total and total).
- ``avqa``: short H.264 MP4 clips with an AAC audio track (a coloured square moving over black while a tone
  plays) and multiple-choice questions about the colour or the pitch, VALOR32K-AVQA style.

Sample ``i`` depends only on ``(seed, i)``, never on worker count or shard layout.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from omni3_prep.media import BITEXACT, run_ffmpeg

KINDS = ("receipts", "avqa")
CORD_PROMPT = "Describe this image."  # the prompt Megatron-Bridge's CORD-v2 adapter uses by default
_MENU = (
    "ICED TEA",
    "LATTE",
    "CHEESE BREAD",
    "FRIED RICE",
    "MINERAL WATER",
    "CHOCO CAKE",
    "NOODLE SOUP",
    "CHICKEN WINGS",
    "LEMONADE",
    "GREEN SALAD",
    "BEEF BURGER",
    "FRENCH FRIES",
    "MANGO JUICE",
    "DUMPLINGS",
)
COLOURS = {"red": "0xE53935", "green": "0x43A047", "blue": "0x1E88E5", "yellow": "0xFDD835", "white": "0xFAFAFA"}
PITCHES = {"low": (220, 330), "high": (880, 1320)}
CLIP_SECONDS = 2
CLIP_FPS = 8
CLIP_SIZE = 96


def _rng(seed: int, index: int, what: str) -> random.Random:
    return random.Random(f"omni3-prep:{what}:{seed}:{index}")


def _money(value: int) -> str:
    return f"{value:,}"


def receipt_ground_truth(seed: int, index: int) -> dict[str, Any]:
    """The CORD-style ground truth of receipt ``index``: what the image shows, as ``gt_parse``."""
    rng = _rng(seed, index, "receipt")
    menu = []
    subtotal = 0
    for name in rng.sample(_MENU, rng.randint(1, 5)):
        count = rng.randint(1, 3)
        unit = rng.randint(2, 60) * 500
        subtotal += count * unit
        menu.append({"nm": name, "cnt": str(count), "price": _money(count * unit)})
    tax = subtotal // 10
    total = subtotal + tax
    paid = ((total // 50000) + 1) * 50000
    return {
        "gt_parse": {
            "menu": menu,
            "sub_total": {"subtotal_price": _money(subtotal), "tax_price": _money(tax)},
            "total": {"total_price": _money(total), "cashprice": _money(paid), "changeprice": _money(paid - total)},
        },
        "meta": {"version": "omni3-synth-1", "image_id": index, "seed": seed},
        "valid_line": [],
    }


RECEIPT_WIDTH = 256  # pixels; the text is drawn at this width and the whole receipt scaled to the one asked for


def receipt_image(seed: int, index: int, fmt: str = "PNG", width: int = RECEIPT_WIDTH) -> bytes:
    """Render receipt ``index`` as an image in ``fmt`` (PNG or JPEG), ``width`` pixels wide (height in proportion)."""
    parse = receipt_ground_truth(seed, index)["gt_parse"]
    lines = [("OMNI3 CAFE", ""), ("", "")]
    lines += [(f"{item['cnt']} x {item['nm']}", item["price"]) for item in parse["menu"]]
    lines += [("", ""), ("SUBTOTAL", parse["sub_total"]["subtotal_price"]), ("TAX", parse["sub_total"]["tax_price"])]
    lines += [("TOTAL", parse["total"]["total_price"]), ("CASH", parse["total"]["cashprice"])]
    lines += [("CHANGE", parse["total"]["changeprice"])]
    base, line_height = RECEIPT_WIDTH, 16
    image = Image.new("RGB", (base, 24 + line_height * len(lines)), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for row, (left, right) in enumerate(lines):
        y = 12 + row * line_height
        draw.text((12, y), left, fill=(20, 20, 20), font=font)
        if right:
            draw.text((base - 12 - draw.textlength(right, font=font), y), right, fill=(20, 20, 20), font=font)
    if width != base:  # nearest neighbour: crisp text, and PNGs a tenth the size a smooth scaling gives
        image = image.resize((width, round(image.height * width / base)), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def json2token(value: Any, sort_keys: bool = True) -> str:
    """CORD's target text: nested keys as <s_key>...</s_key>, list items joined by <sep/> (Donut convention)."""
    if isinstance(value, dict):
        if len(value) == 1 and "text_sequence" in value:
            return str(value["text_sequence"])
        keys = sorted(value, reverse=True) if sort_keys else list(value)
        return "".join(f"<s_{key}>{json2token(value[key], sort_keys)}</s_{key}>" for key in keys)
    if isinstance(value, list):
        return "<sep/>".join(json2token(item, sort_keys) for item in value)
    return str(value)


def cord_conversation(ground_truth: dict[str, Any], prompt: str = CORD_PROMPT) -> tuple[dict[str, Any], ...]:
    """The SFT turns for one CORD-style row, as Megatron-Bridge's CORD-v2 adapter builds them."""
    parses = ground_truth.get("gt_parses") or [ground_truth["gt_parse"]]
    return (
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": json2token(parses[0])}]},
    )


def clip_params(seed: int, index: int) -> dict[str, Any]:
    """What clip ``index`` shows and plays."""
    rng = _rng(seed, index, "clip")
    colour = rng.choice(sorted(COLOURS))
    pitch = rng.choice(sorted(PITCHES))
    low, high = PITCHES[pitch]
    return {"colour": colour, "pitch": pitch, "frequency": rng.randint(low, high), "speed": rng.randint(15, 40)}


def clip_questions(seed: int, index: int) -> list[dict[str, Any]]:
    """Two multiple-choice questions about clip ``index`` (VALOR32K-AVQA fields), options in a seeded order."""
    params = clip_params(seed, index)
    rng = _rng(seed, index, "qa")
    colours = [params["colour"], *rng.sample([c for c in sorted(COLOURS) if c != params["colour"]], 3)]
    rng.shuffle(colours)
    pitches = sorted(PITCHES)
    return [
        {
            "question": "What colour is the moving square?",
            "options": colours,
            "correct_answer_idx": colours.index(params["colour"]),
            "modality": "visual",
        },
        {
            "question": "Is the tone you hear high or low pitched?",
            "options": pitches,
            "correct_answer_idx": pitches.index(params["pitch"]),
            "modality": "audio",
        },
    ]


def clip_video(seed: int, index: int) -> bytes:
    """Render clip ``index``: H.264 video with an AAC tone, a few kilobytes."""
    params = clip_params(seed, index)
    size, duration = CLIP_SIZE, CLIP_SECONDS
    inputs = [
        "-f", "lavfi", "-i", f"color=c=black:s={size}x{size}:r={CLIP_FPS}:d={duration}",
        "-f", "lavfi", "-i", f"color=c={COLOURS[params['colour']]}:s=24x24:r={CLIP_FPS}:d={duration}",
        "-f", "lavfi", "-i", f"sine=frequency={params['frequency']}:sample_rate=16000:duration={duration}",
    ]  # fmt: skip
    graph = f"[0:v][1:v]overlay=x='t*{params['speed']}':y={size // 2 - 12}:shortest=1,format=yuv420p[v]"
    encode = ["-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "32k"]
    with tempfile.TemporaryDirectory(prefix="omni3-prep-synth-") as scratch:
        target = Path(scratch) / "clip.mp4"
        args = ["-threads", "1", *inputs, "-filter_complex", graph, *encode, "-threads", "1"]
        run_ffmpeg([*args, "-movflags", "+faststart", "-shortest", *BITEXACT, str(target)], "synthetic clip")
        return target.read_bytes()


def clip_name(seed: int, index: int) -> str:
    """VALOR-style file stem: ``{video id}_{start}_{end}`` with the timestamps QA files do not carry."""
    return f"syn{seed:04d}v{index:06d}_{index * 10:.3f}_{index * 10 + CLIP_SECONDS:.3f}"


def render(params: dict[str, Any]) -> bytes:
    """Bytes of one synthetic media item, as named by a ``MediaRef(how="synth")``'s params."""
    if params["what"] == "receipt":
        width = params.get("width", RECEIPT_WIDTH)
        return receipt_image(params["seed"], params["index"], params.get("format", "PNG"), width)
    if params["what"] == "clip":
        return clip_video(params["seed"], params["index"])
    raise ValueError(f"unknown synthetic media {params['what']!r}")


def dump_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
