"""Users' item sequences and the leave-one-out split (``SequenceData``, ``Example``).

Split (RecBole's ``LS`` ``valid_and_test``, in time order). For a user whose items are
``s[0..n-1]``::

    test  = Example(target=s[n-1], history=s[:n-1][-max_history:], seen=s[:n-1])
    valid = Example(target=s[n-2], history=s[:n-2][-max_history:], seen=s[:n-2])
    train = Example(target=s[i],   history=s[:i][-max_history:],   seen=s[:i])   for i in 1..n-3

so a user gives a test example when n >= 2, a validation example when n >= 3 and n - 3
training examples (none below 4 items; k-core filtering with the default 5 guarantees all
three). ``seen`` is everything before the target, for excluding from ranking; ``history``
is its last ``max_history`` items, for the model's input.

A split is a lazy, read-only sequence: ``len``, indexing, slicing (which gives a list) and
iteration build ``Example`` objects on demand, because every training example's ``seen``
is a prefix of its user's sequence and materialising them all costs memory quadratic in
sequence length (about 1.5 GB for MovieLens-1M). ``list(data.split("train"))`` gives a
plain list where one is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

SPLITS = ("train", "valid", "test")


class Example(NamedTuple):
    """One prediction task: ``user``'s next item ``target`` after ``history`` (the last
    ``max_history`` items before it, oldest first); ``seen`` is every item before it."""

    user: int
    history: list[int]
    target: int
    seen: list[int]


class ExampleSplit(Sequence):
    """The examples of one split, built on access (see the module docstring).

    Behaves as a read-only list of ``Example``: ``len(s)``, ``s[i]`` (negative too),
    ``s[a:b]`` (a list), iteration, and ``==`` with any sequence of examples."""

    def __init__(self, sequences: Sequence[Sequence[int]], users: np.ndarray, positions: np.ndarray,
                 max_history: int | None) -> None:
        self._sequences, self._users, self._positions = sequences, users, positions
        self._max_history = max_history

    def __len__(self) -> int:
        return len(self._users)

    def _example(self, j: int) -> Example:
        u, i = int(self._users[j]), int(self._positions[j])
        seq = self._sequences[u]
        seen = list(seq[:i])
        history = seen if self._max_history is None else seen[-self._max_history:]
        return Example(u, list(history), int(seq[i]), seen)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._example(j) for j in range(*index.indices(len(self)))]
        n = len(self)
        j = index + n if index < 0 else index
        if not 0 <= j < n:
            raise IndexError(f"example index {index} out of range for a split of {n}")
        return self._example(j)

    def __iter__(self) -> Iterator[Example]:
        return (self._example(j) for j in range(len(self)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable-list semantics: not hashable

    def __repr__(self) -> str:
        return f"ExampleSplit({len(self)} examples, max_history={self._max_history})"

    def last_per_user(self, n: int) -> ExampleSplit:
        """The examples of each user's last ``n`` positions only (all of them for a user with
        fewer): the way LLM recommenders fit a training budget, keeping the most recent
        behaviour, every user represented, and the order (user by user)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        users = self._users
        if len(users) == 0:
            return self
        # index from the end within each user's run: 0 for the last example of the user
        boundary = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # last index of each run
        run_end = np.repeat(boundary, np.diff(np.r_[-1, boundary]))
        keep = (run_end - np.arange(len(users))) < n
        return ExampleSplit(self._sequences, users[keep], self._positions[keep], self._max_history)

    @property
    def users(self) -> np.ndarray:
        """The user index of every example (int64 [len]), without building the examples."""
        return self._users

    def user_items(self) -> list[list[int]]:
        """For each user with examples here, every item the split shows them: the ``seen``
        items and target of their last example (for train: ``s[0..n-3]``, the training
        interactions). Built without the examples; used for popularity counts."""
        if len(self._users) == 0:
            return []
        last = np.ones(len(self._users), dtype=bool)
        last[:-1] = self._users[1:] != self._users[:-1]
        return [list(self._sequences[u][:p + 1]) for u, p in zip(self._users[last].tolist(),
                                                                self._positions[last].tolist())]

    @property
    def targets(self) -> np.ndarray:
        """The target item of every example (int64 [len]), without building the examples."""
        return np.array([self._sequences[u][i] for u, i in zip(self._users.tolist(),
                                                                  self._positions.tolist())],
                        dtype=np.int64)


@dataclass
class SequenceData:
    """Interactions as per-user item sequences with remapped ids (see ``load_sequences``).

    Attributes:
        sequences: user u's items (ids 1..num_items) in time order; ties keep file order.
        item_ids: the raw id of item i at index i - 1 (item 0 is padding).
        user_ids: the raw id of user u at index u.
        titles: titles[i - 1] is item i's title; None when the source has no titles.
        stats: counts of what was read, removed and kept (see ``load_sequences``).
        max_history: the default history length of ``split`` (None: no limit).
    """

    sequences: list[list[int]]
    item_ids: list[str]
    user_ids: list[str]
    titles: list[str] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    max_history: int | None = 20

    @property
    def num_items(self) -> int:
        """The number of items; ids run 1..num_items (0 is padding)."""
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        """The number of users; user indices run 0..num_users - 1."""
        return len(self.user_ids)

    def split(self, name: str, *, max_history: int | str | None = "default") -> ExampleSplit:
        """The ``"train"``, ``"valid"`` or ``"test"`` examples of the leave-one-out split,
        user by user (and, in train, position by position). ``max_history`` overrides the
        data's default history length (None: the whole history)."""
        if name not in SPLITS:
            raise ValueError(f"split name must be one of {SPLITS}, got {name!r}")
        if max_history == "default":
            max_history = self.max_history
        check_max_history(max_history)
        lengths = np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=len(self.sequences))
        if name == "test":
            users = np.flatnonzero(lengths >= 2)
            positions = lengths[users] - 1
        elif name == "valid":
            users = np.flatnonzero(lengths >= 3)
            positions = lengths[users] - 2
        else:  # positions 1..n-3 of every user, user by user
            counts = np.maximum(lengths - 3, 0)
            users = np.repeat(np.arange(len(lengths)), counts)
            starts = np.cumsum(counts) - counts
            positions = np.arange(int(counts.sum())) - np.repeat(starts, counts) + 1
        return ExampleSplit(self.sequences, users.astype(np.int64), positions.astype(np.int64),
                            max_history)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"SequenceData({self.num_users} users, {self.num_items} items, "
                f"{sum(len(s) for s in self.sequences)} interactions, "
                f"titles={'yes' if self.titles is not None else 'no'})")


def check_max_history(max_history) -> None:
    """max_history is None or a positive int."""
    if max_history is not None and (not isinstance(max_history, int) or isinstance(max_history, bool)
                                    or max_history < 1):
        raise ValueError(f"max_history must be a positive int or None, got {max_history!r}")
