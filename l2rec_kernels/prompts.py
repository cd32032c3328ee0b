"""Prompt builders: a user's history (item ids) -> the token ids of their prompt.

The model reads two things per user: the history ids (its view encoders) and a text
prompt (the backbone). A client may send the tokenised prompt itself (``prompt_ids``);
otherwise the deployment builds it from the history with one of these:

* ``SyntheticPromptBuilder`` for the built-in tiny model: the synthetic catalogue's own
  prompt (BOS, then each item's title and a separator), as it was trained.
* ``TitlePromptBuilder`` for a checkpoint with item titles: ``template`` with ``{titles}``
  replaced by the history's titles joined by ``"; "``, tokenised by the backbone's
  tokenizer. Match the template to the one the checkpoint was trained with.
* ``FixedLengthPromptBuilder`` for a random-weight model of a named shape (benchmarks):
  prompts of exactly the shape's length, whatever the history, so a timing is at that length.

A checkpoint served without titles has no builder: requests must carry ``prompt_ids``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

DEFAULT_TEMPLATE = ("The user recently interacted with these items, oldest first: {titles}. "
                    "Recommend the next item.")


def _clip(tokens: list[int], max_tokens: int) -> list[int]:
    # Keep the end: the most recent items (and the instruction after them) matter most.
    return tokens[-max_tokens:] if len(tokens) > max_tokens else tokens


class SyntheticPromptBuilder:
    """The prompt of ``l2rec_kernels.synthetic.SyntheticCatalogue`` (the tiny built-in model)."""

    def __init__(self, catalogue, max_tokens: int) -> None:
        self.catalogue = catalogue
        self.max_tokens = max_tokens

    def __call__(self, history: Sequence[int]) -> list[int]:
        return _clip(self.catalogue.prompt_tokens(history), self.max_tokens)


class TitlePromptBuilder:
    """``template`` filled with the history's titles, tokenised by a Hugging Face tokenizer."""

    def __init__(self, titles: Sequence[str], tokenizer, max_tokens: int,
                 template: str = DEFAULT_TEMPLATE) -> None:
        if "{titles}" not in template:
            raise ValueError("template must contain the placeholder {titles}")
        self.titles, self.tokenizer = list(titles), tokenizer
        self.max_tokens, self.template = max_tokens, template

    def __call__(self, history: Sequence[int]) -> list[int]:
        text = self.template.replace("{titles}", "; ".join(self.titles[i - 1] for i in history))
        return _clip(list(self.tokenizer(text)["input_ids"]), self.max_tokens)


class FixedLengthPromptBuilder:
    """``length`` token ids in [1, vocab) from the history, the same for the same history:
    position j holds ``(item * 7919 + j) % (vocab - 1) + 1`` for the history's items in
    turn. For random-weight models of a named shape, whose speed depends on the prompt's
    length only (token 0, often padding, is never drawn)."""

    def __init__(self, vocab: int, length: int) -> None:
        if vocab < 2 or length < 1:
            raise ValueError(f"vocab must be >= 2 and length >= 1, got {vocab} and {length}")
        self.vocab, self.length = vocab, length

    def __call__(self, history: Sequence[int]) -> list[int]:
        if not history:
            raise ValueError("history must not be empty")
        return [(history[j % len(history)] * 7919 + j) % (self.vocab - 1) + 1 for j in range(self.length)]


def hashed_word_tokens(text: str, vocab: int) -> list[int]:
    """A prompt text as token ids in [1, vocab) without a tokenizer: each word's CRC-32
    (stable across processes, unlike ``hash``), for random-weight models of a named shape."""
    import zlib

    return [zlib.crc32(w.encode("utf-8")) % (vocab - 1) + 1 for w in text.split()]


def load_titles(path: str | os.PathLike, num_items: int) -> list[str]:
    """Item titles from a file: a JSON list of strings, or plain text with one title per
    line. Title i (1-based, like item ids) is entry i - 1; there must be ``num_items``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if str(path).endswith(".json"):
        titles = json.loads(text)
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            raise ValueError(f"{path}: expected a JSON list of strings")
    else:
        titles = text.splitlines()
    if len(titles) != num_items:
        raise ValueError(f"{path} has {len(titles)} titles but the checkpoint has {num_items} items")
    return titles
