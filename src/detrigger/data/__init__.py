"""Data: built-in offline corpora, user files, Hugging Face data sets; dedup, splits, clean subsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from detrigger.data.builtin import CORPORA, Corpus
from detrigger.data.dataset import Splits, TextDataset, clean_subset, split
from detrigger.data.files import SUFFIXES, read_file
from detrigger.data.hf import is_saved_dataset, read_hf
from detrigger.errors import DetriggerError, invalid
from detrigger.fingerprint import content_id

__all__ = ["CORPORA", "SOURCE", "Corpus", "DataSpec", "Splits", "TextDataset", "check_source", "clean_subset",
           "corpora_table", "data_spec", "default_part", "describe", "fetch_corpora", "load_data", "load_part",
           "load_splits", "split"]


def load_data(source: str | Path, *, text_column: str = "text", label_column: str = "label",
              label_names: Sequence[str] | None = None, hf_split: str = "train") -> TextDataset:
    """Load a data set by built-in name, file path, saved HF folder or `hf:NAME[:CONFIG]`; deduplicated.

    `label_names` (a model's label set) makes file labels map onto that model's ids, and a label outside
    it an error; without it the file's own labels define the mapping.
    """
    source = str(source)
    if source in CORPORA:
        ds = CORPORA[source].load()
        if label_names is not None and tuple(label_names) != ds.label_names:
            raise DetriggerError(f"data set {source!r} has labels [{', '.join(ds.label_names)}] "
                                 f"but the model's are [{', '.join(label_names)}]")
        return ds.dedup()
    path = Path(source)
    if source.startswith("hf:") or is_saved_dataset(path):
        return read_hf(source, split=hf_split, text_column=text_column, label_column=label_column,
                       label_names=label_names).dedup()
    if path.suffix.lower() in SUFFIXES or path.is_file():
        return read_file(path, text_column=text_column, label_column=label_column,
                         label_names=label_names).dedup()
    raise DetriggerError(f"unknown data set {source!r}: not a built-in corpus ({', '.join(CORPORA)}), "
                         "a .csv/.tsv/.jsonl file, a saved Hugging Face data set folder or hf:NAME")


class DataSpec(BaseModel):
    """Everything that determines a data split: source, columns, split sizes and seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    text_column: str = Field("text", description="text column of a CSV/TSV/JSONL file")
    label_column: str = Field("label", description="label column of a file")
    val: float | int = Field(0.1, ge=0, description="validation size: fraction of the whole set, or a count")
    test: float | int = Field(0.2, ge=0, description="test size: fraction of the whole set, or a count")
    seed: int = Field(0, description="split seed: if not given, the one recorded with the model, else the default")
    max_train: int | None = Field(None, ge=1, description="cap on the training split (stratified sample)")

    def identity(self) -> dict[str, Any]:
        """What determines the data, for cache and cell keys: the fields, plus a hash of the contents when the
        source is a local file or folder (built-in archives are sha256-checked; `hf:` names are the hub's)."""
        fields = self.model_dump()
        if self.source not in CORPORA and not self.source.startswith("hf:") and Path(self.source).exists():
            fields["content"] = content_id(self.source)
        return fields


def check_source(spec: DataSpec) -> None:
    """Fail now if the data a spec names cannot be loaded: a local file or folder is read whole (columns,
    lines, labels); a built-in name is known; `hf:` names are checked when the hub is reached."""
    if spec.source in CORPORA or spec.source.startswith("hf:"):
        return
    load_data(spec.source, text_column=spec.text_column, label_column=spec.label_column)


def load_splits(spec: DataSpec, label_names: Sequence[str] | None = None) -> Splits:
    """Load, deduplicate and split the data a spec names."""
    ds = load_data(spec.source, text_column=spec.text_column, label_column=spec.label_column, label_names=label_names)
    return split(ds, val=spec.val, test=spec.test, seed=spec.seed, max_train=spec.max_train)


Part = Literal["train", "val", "test", "all"]
SOURCE = "a built-in corpus, a file, a saved HF folder or hf:NAME"  # what a data source may be (options' help)


def data_spec(source: str, recorded: dict[str, Any] | None = None, **given: Any) -> DataSpec:
    """The DataSpec of `source`: the fields given (None: not given), else those `recorded` with a model trained on
    the same source (its split, so that its test texts stay unseen), else the defaults; one DetriggerError
    naming a bad field."""
    recorded = recorded if recorded and recorded.get("source") == source else {}
    fields = {key: recorded[key] for key in ("seed", "val", "test", "max_train") if recorded.get(key) is not None}
    fields.update({key: value for key, value in given.items() if value is not None})
    try:
        return DataSpec(source=source, **fields)
    except ValueError as exc:  # pydantic names the field
        raise DetriggerError(invalid(exc)) from None


def default_part(source: str, part: Part) -> Part:
    """`part` of a built-in corpus; all of any other source (a file is the user's own chosen texts)."""
    return part if source in CORPORA else "all"


def load_part(source: str, part: Part, *, label_names: Sequence[str] | None = None,
              recorded: dict[str, Any] | None = None, **given: Any) -> TextDataset:
    """Labelled texts on a model's `label_names`: `part` (train / val / test) of `source` split as `data_spec`
    says, or all of it."""
    spec = data_spec(source, recorded, **given)
    if part != "all":
        return getattr(load_splits(spec, label_names=label_names), part)
    return load_data(source, text_column=spec.text_column, label_column=spec.label_column, label_names=label_names)


def describe(spec: DataSpec, rows: int = 5) -> str:
    """A data set's size after deduplication, label balance, split sizes, text lengths and its first `rows`
    training rows, as `detrigger data show` prints them."""
    splits = load_splits(spec)
    names = splits.train.label_names
    whole = len(splits.train) + len(splits.val) + len(splits.test)
    counts = {name: sum(part.counts().get(name, 0) for part in (splits.train, splits.val, splits.test))
              for name in names}
    lengths = sorted(len(t.split()) for t in splits.train.texts)
    return "\n".join([f"{spec.source}: {whole} rows after exact-duplicate removal, {len(names)} classes",
                      *(f"  {i} {name:<15} {n:>7}  {100 * n / whole:5.1f}%"
                        for i, (name, n) in enumerate(counts.items())),
                      f"split (seed {spec.seed}): " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()),
                      f"words per text (train): median {lengths[len(lengths) // 2]}, max {lengths[-1]}",
                      *(f"  [{names[y]}] {t if len(t) <= 100 else t[:97] + '...'}"
                        for t, y in list(zip(splits.train.texts, splits.train.labels))[:rows])])


def corpora_table() -> str:
    """The built-in corpora, their classes and whether each is fetched, as `detrigger data list` prints them."""
    from detrigger.data.fetch import is_fetched

    rows = [f"{c.name:<13} {len(c.label_names):<8} {'yes' if is_fetched(c.archive) else 'no':<8} {c.description}"
            for c in CORPORA.values()]
    return "\n".join([f"{'name':<13} {'classes':<8} {'fetched':<8} description", *rows, "",
                      "Also: a .csv/.tsv/.jsonl file, a saved Hugging Face data set folder, or hf:NAME[:CONFIG]."])


def fetch_corpora(names: Sequence[str]) -> Iterator[str]:
    """Download the named built-in corpora (none named: all) into the cache, one by one; a line per corpus: its
    path."""
    from detrigger.data.fetch import fetch

    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise DetriggerError(f"unknown corpus {unknown[0]!r} (built-in: {', '.join(CORPORA)})")
    for name in names or CORPORA:
        yield f"{name}: {fetch(CORPORA[name].archive)}"
