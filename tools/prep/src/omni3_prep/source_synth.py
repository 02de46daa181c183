"""``omni3-prep synth``: Energon datasets from the built-in synthetic samples (see ``synth``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omni3_prep import synth
from omni3_prep.records import MediaRef, PlannedSource, Record


def split_sizes(count: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Contiguous split sizes; val and test get at least one sample each once there are three."""

    def share(fraction: float) -> int:
        if fraction <= 0:
            return 0
        return max(1 if count >= 3 else 0, round(count * fraction))

    val, test = share(val_fraction), share(test_fraction)
    return {"train": max(0, count - val - test), "val": val, "test": test}


def placements(count: int, val_fraction: float, test_fraction: float) -> Iterator[tuple[int, str]]:
    index = 0
    for split, size in split_sizes(count, val_fraction, test_fraction).items():
        for _ in range(size):
            yield index, split
            index += 1


def receipt_record(
    seed: int, index: int, split: str, prompt: str = synth.CORD_PROMPT, width: int = synth.RECEIPT_WIDTH
) -> Record:
    params: tuple[tuple[str, Any], ...] = (("what", "receipt"), ("seed", seed), ("index", index), ("format", "PNG"))
    if width != synth.RECEIPT_WIDTH:  # the default stays out, so datasets made before the setting read the same
        params += (("width", width),)
    return Record(
        key=f"receipt-{index:06d}",
        split=split,
        conversation=synth.cord_conversation(synth.receipt_ground_truth(seed, index), prompt),
        media=(MediaRef("image", "synth", params=params),),
        origin=f"synthetic receipt {index} (seed {seed})",
    )


def clip_record(seed: int, index: int, split: str) -> Record:
    question = synth.clip_questions(seed, index)[index % 2]
    params = (("what", "clip"), ("seed", seed), ("index", index))
    answer = question["options"][question["correct_answer_idx"]]
    return Record(
        key=f"clip-{index:06d}",
        split=split,
        conversation=(
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question["question"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ),
        media=(
            MediaRef("video", "synth", params=params),
            MediaRef("audio", "synth", params=params, derive="audio-from-video"),
        ),
        origin=f"synthetic clip {index} (seed {seed})",
    )


def plan(
    kind: str,
    count: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    prompt: str = synth.CORD_PROMPT,
    receipt_width: int = synth.RECEIPT_WIDTH,
) -> PlannedSource:
    splits = placements(count, val_fraction, test_fraction)
    if kind == "receipts":
        items = (receipt_record(seed, index, split, prompt, receipt_width) for index, split in splits)
    else:
        items = (clip_record(seed, index, split) for index, split in splits)
    description = {
        "type": "synth",
        "kind": kind,
        "seed": seed,
        "samples": count,
        **({"receipt_width": receipt_width} if kind == "receipts" else {}),
        "splits": split_sizes(count, val_fraction, test_fraction),
    }
    return PlannedSource(name="synth", description=description, items=items, total_hint=count)
