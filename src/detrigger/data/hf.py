"""Hugging Face `datasets` as a source: a hub name (online users) or a `save_to_disk` folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detrigger.data.dataset import TextDataset
from detrigger.data.files import label_ids
from detrigger.errors import DetriggerError


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


def read_hf(spec: str, *, split: str = "train", text_column: str = "text", label_column: str = "label",
            label_names: Sequence[str] | None = None) -> TextDataset:
    """`hf:NAME[:CONFIG]` loads from the hub (needs network); a folder loads with `load_from_disk`."""
    try:
        import datasets
    except ImportError:
        raise DetriggerError("Hugging Face data sets need the `datasets` package: "
                             "pip install 'detrigger[hf]'") from None
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split)
        except Exception as exc:  # hub errors come in many types; the message is what the user needs
            raise DetriggerError(f"could not load Hugging Face data set {name!r}: {exc}".splitlines()[0]) from None
        where = spec
    else:
        ds = datasets.load_from_disk(spec)
        where = spec
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DetriggerError(f"{spec}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    for col in (text_column, label_column):
        if col not in ds.column_names:
            raise DetriggerError(f"{where}: no column {col!r} (columns: {', '.join(ds.column_names)})")
    feature = ds.features[label_column]
    texts = ds[text_column]
    labels = ds[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if label_names is None:
            label_names = feature.names
        labels = [feature.int2str(y) for y in labels]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DetriggerError(f"{where}: row {i}: empty text in column {text_column!r}")
    ids, names = label_ids([(i, str(y)) for i, y in enumerate(labels)], label_names, where, unit="row")
    return TextDataset(tuple(t.strip() for t in texts), tuple(ids), names, Path(spec).name or spec)
