"""`TextDataset`, exact-duplicate removal, seeded stratified splits and clean subsets."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detrigger.errors import DetriggerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextDataset:
    """Labelled texts: `labels[i]` indexes `label_names`; `name` says where the data came from."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    name: str = "data"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(f"{self.name}: label id {bad[0]} outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        """Number of rows per label name, in label-id order."""
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.label_names)}

    def select(self, indices: Sequence[int], name: str | None = None) -> TextDataset:
        """The rows at `indices`, in that order."""
        return TextDataset(
            tuple(self.texts[i] for i in indices),
            tuple(self.labels[i] for i in indices),
            self.label_names,
            name or self.name,
        )

    def dedup(self) -> TextDataset:
        """Drop exact duplicate texts, keeping the first; a text seen with two labels is dropped entirely."""
        labels_of: dict[str, set[int]] = {}
        for t, y in zip(self.texts, self.labels):
            labels_of.setdefault(t, set()).add(y)
        seen: set[str] = set()
        keep = []
        for i, t in enumerate(self.texts):
            if t in seen or len(labels_of[t]) > 1:
                continue
            seen.add(t)
            keep.append(i)
        conflicting = sum(1 for s in labels_of.values() if len(s) > 1)
        if len(keep) < len(self):
            log.info("%s: removed %d duplicate rows (%d texts had conflicting labels)", self.name,
                     len(self) - len(keep), conflicting)
        return self.select(keep)


@dataclass(frozen=True)
class Splits:
    train: TextDataset
    val: TextDataset
    test: TextDataset

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _per_label_counts(counts: np.ndarray, size: float | int, what: str) -> np.ndarray:
    """How many rows of each label a stratified draw of `size` takes (fraction or count, largest remainder)."""
    total = int(counts.sum())
    if isinstance(size, float) and not isinstance(size, bool):
        if not 0.0 <= size <= 1.0:
            raise DetriggerError(f"{what} fraction must be between 0 and 1, got {size}")
        n = int(round(size * total))
    else:
        n = int(size)
        if not 0 <= n <= total:
            raise DetriggerError(f"{what} count must be between 0 and {total}, got {n}")
    exact = counts * (n / total) if total else counts * 0.0
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    return np.minimum(take, counts)


def _stratified_take(ds: TextDataset, size: float | int, rng: np.random.Generator,
                     what: str) -> tuple[list[int], list[int]]:
    """Split row indices into (taken, rest) with each label in proportion."""
    labels = np.asarray(ds.labels, dtype=int)
    counts = np.bincount(labels, minlength=len(ds.label_names))
    take = _per_label_counts(counts, size, what)
    taken: list[int] = []
    rest: list[int] = []
    for y in range(len(ds.label_names)):
        idx = np.flatnonzero(labels == y)
        rng.shuffle(idx)
        taken += idx[: take[y]].tolist()
        rest += idx[take[y]:].tolist()
    return sorted(taken), sorted(rest)


def split(ds: TextDataset, *, val: float | int = 0.1, test: float | int = 0.2, seed: int = 0,
          max_train: int | None = None) -> Splits:
    """Seeded stratified train/validation/test split.

    `val` and `test` are fractions of the whole set (float) or row counts (int). `max_train` caps the
    training split (a stratified sample of what is left) so small, affordable runs stay comparable.
    """
    rng = np.random.default_rng(seed)
    test_idx, rest = _stratified_take(ds, test, rng, "test")
    rest_ds = ds.select(rest)
    if isinstance(val, float):  # a fraction of the whole set, not of what is left
        val = int(round(val * len(ds)))
    val_local, train_local = _stratified_take(rest_ds, val, rng, "validation")
    train_ds = rest_ds.select(train_local, f"{ds.name}:train")
    if max_train is not None and max_train < len(train_ds):
        train_ds = clean_subset(train_ds, count=max_train, seed=seed)
    return Splits(train_ds, rest_ds.select(val_local, f"{ds.name}:val"), ds.select(test_idx, f"{ds.name}:test"))


def clean_subset(ds: TextDataset, *, fraction: float | None = None, count: int | None = None,
                 seed: int = 0) -> TextDataset:
    """A seeded stratified subset by fraction or by count (exactly one of them)."""
    if (fraction is None) == (count is None):
        raise DetriggerError("give exactly one of a clean fraction or a clean count")
    size: float | int = float(fraction) if fraction is not None else int(count)  # type: ignore[arg-type]
    taken, _ = _stratified_take(ds, size, np.random.default_rng(seed), "clean subset")
    return ds.select(taken, f"{ds.name}:subset")
