"""A small byte-level BPE tokenizer for the tiny Omni, trained offline and deterministically.

Ids 0..31 are single-token specials at the ids the Omni bridge and collator use; a byte-level BPE keeps the
ChatML role markers distinct (a word-level vocabulary with <unk> makes them collide).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from omni3_import.tiny_model.spec import (
    IMAGE_CONTEXT_ID,
    IMAGE_END_ID,
    IMAGE_START_ID,
    SOUND_CONTEXT_ID,
    SOUND_END_ID,
    SOUND_START_ID,
)

NUM_RESERVED = 32
NAMED_SPECIALS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "<pad>",
    10: "<|im_start|>",
    11: "<|im_end|>",
    12: "<think>",
    13: "</think>",
    IMAGE_CONTEXT_ID: "<image>",
    IMAGE_START_ID: "<img>",
    IMAGE_END_ID: "</img>",
    SOUND_CONTEXT_ID: "<so_embedding>",
    SOUND_START_ID: "<so_start>",
    SOUND_END_ID: "<so_end>",
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'audio' %}{{ '<so_embedding>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text: role markers, chat phrasing and the words of the synthetic data sets, so that common
# strings become few tokens. Fixed, so the tokenizer is the same on every machine.
CORPUS = [
    "system\nYou are a helpful assistant that describes images and sounds.",
    "user\nWhat is shown in this picture? Describe the image in detail.",
    "assistant\nThe image shows a red square on a white background with a blue circle.",
    "user\nTranscribe the audio clip. What do you hear in the sound?",
    "assistant\nA short tone at four hundred and forty hertz, then silence.",
    "developer\ntool\nThe receipt lists the total, the tax, the items and the price of each item.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
    "green yellow black white colour color shape triangle circle square speech music noise",
]


def train_tokenizer(vocab_size: int) -> Tokenizer:
    specials = [NAMED_SPECIALS.get(i, f"<SPECIAL_{i}>") for i in range(NUM_RESERVED)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,  # added first, in order, so they get ids 0..31
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    for token_id, token in NAMED_SPECIALS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"special {token} got id {tokenizer.token_to_id(token)}, expected {token_id}")
    return tokenizer


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        model_max_length=4096,
        padding_side="right",
        chat_template=CHATML_TEMPLATE,
    )
    return fast


def save_tokenizer(output_dir: Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save_pretrained(str(output_dir))
    return tokenizer
