"""A synthetic catalogue with a planted preference, for examples, demos and serving.

Items 1..N belong to G genres (item i has genre (i - 1) % G). Each item's "title" is two
words, its genre word and its own word, tokenised by a word-level tokenizer
(``word_tokenizer.fixed_word_tokenizer``: ids 0 [PAD], 1 [BOS], 2 [SEP], then the genre
words, then the item words), so the
semantic view can see genres through the text table while the behavioral view sees ids.
A user prefers one genre: most of their history, and their next item, come from it.
A model that learns should reach a hit rate far above chance (k / N).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import torch

from .models.inputs import pad_rows
from .word_tokenizer import encode_words, fixed_word_tokenizer

PAD, BOS, SEP = 0, 1, 2
SPECIALS = ("[PAD]", "[BOS]", "[SEP]")  # ids PAD, BOS, SEP


class SyntheticCatalogue:
    """``num_items`` items in ``num_genres`` genres, with titles and a prompt builder."""

    def __init__(self, num_items: int = 200, num_genres: int = 10, max_history: int = 8) -> None:
        if num_items < num_genres:
            raise ValueError("num_items must be >= num_genres")
        self.num_items, self.num_genres, self.max_history = num_items, num_genres, max_history
        genre_words = [f"genre{g}" for g in range(num_genres)]
        item_words = [f"item{i}" for i in range(1, num_items + 1)]
        self.words = [*genre_words, *item_words]  # token ids len(SPECIALS) onwards
        # No unknown-word token (an unknown word is an error) and no automatic [BOS]: the
        # prompts put BOS first themselves, and titles are embedded without it.
        self.tokenizer = fixed_word_tokenizer(self.words, SPECIALS)
        self.titles = [f"genre{self.genre(i)} item{i}" for i in range(1, num_items + 1)]
        self._title_tokens = [self.encode(t) for t in self.titles]

    def encode(self, text: str) -> list[int]:
        """``text``'s token ids (no BOS); ValueError when a word is not the catalogue's."""
        return encode_words(self.tokenizer, text)

    def genre(self, item: int) -> int:
        return (item - 1) % self.num_genres

    def check_history(self, history: Sequence[int], user: int | None = None) -> list[int]:
        """``history`` as a list of int item ids. ValueError naming the first id that is not
        an int in 1..num_items (``user``: its row, for the message); TypeError if it is not
        a sequence."""
        where = "" if user is None else f" (user {user})"
        if isinstance(history, (str, bytes, dict)) or not isinstance(history, Iterable):
            raise TypeError(f"a history must be a sequence of item ids, got {history!r}{where}")
        ids = []
        for item in history:
            try:
                if isinstance(item, bool) or (isinstance(item, torch.Tensor) and item.dtype == torch.bool):
                    raise TypeError
                value = operator.index(item)
            except TypeError:
                raise ValueError(f"history item ids must be ints, got {item!r} "
                                 f"({type(item).__name__}){where}") from None
            if not 1 <= value <= self.num_items:
                raise ValueError(f"history item ids must be in 1..{self.num_items}, got {value}{where}")
            ids.append(value)
        return ids

    def check_histories(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        """Every history checked (``check_history``), as lists of ints."""
        if isinstance(histories, (str, bytes, dict)) or not isinstance(histories, Iterable):
            raise TypeError(f"histories must be a sequence of histories (lists of item ids), "
                            f"got {histories!r}")
        return [self.check_history(h, user) for user, h in enumerate(histories)]

    def prompt_tokens(self, history: Sequence[int]) -> list[int]:
        """BOS, then each history item's title followed by SEP (the prompt lists the titles)."""
        return self._prompt_tokens(self.check_history(history))

    def prompts(self, histories: Sequence[Sequence[int]], side: str = "left") -> dict:
        return self._prompts(self.check_histories(histories), side)

    def history_tensor(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """[len(histories), max_history]: each history's last ``max_history`` ids, 0-padded."""
        return self._history_tensor(self.check_histories(histories))

    # The public methods check their histories once, then call these on the checked lists.
    def _prompt_tokens(self, ids: list[int]) -> list[int]:
        tokens = [BOS]
        for item in ids:
            tokens += [*self._title_tokens[item - 1], SEP]
        return tokens

    def _prompts(self, histories: list[list[int]], side: str) -> dict:
        return pad_rows([self._prompt_tokens(h) for h in histories], side=side)

    def _history_tensor(self, histories: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(histories), self.max_history, dtype=torch.long)
        for i, h in enumerate(histories):
            h = h[-self.max_history:]
            out[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        return out

    def sample_users(self, n: int, generator: torch.Generator, noise: float = 0.2):
        """n users: (histories, next items, preferred genres). ``noise``: off-genre share."""
        genres = torch.randint(self.num_genres, (n,), generator=generator)
        per_genre = self.num_items // self.num_genres

        def item_of(genre: int) -> int:
            return int(torch.randint(per_genre, (1,), generator=generator)) * self.num_genres + genre + 1

        histories, targets = [], []
        for g in genres.tolist():
            length = int(torch.randint(3, self.max_history + 1, (1,), generator=generator))
            hist = []
            for _ in range(length):
                off = float(torch.rand(1, generator=generator)) < noise
                other = int(torch.randint(self.num_genres, (1,), generator=generator))
                hist.append(item_of(other if off else g))
            histories.append(hist)
            targets.append(item_of(g))
        return histories, torch.tensor(targets), genres

    def batch(self, histories, side: str = "left") -> dict[str, torch.Tensor]:
        """Model inputs for these histories (lists of item ids in 1..num_items; a bad id
        raises ValueError naming it and its user)."""
        histories = self.check_histories(histories)
        return {**self._prompts(histories, side), "history_ids": self._history_tensor(histories)}
