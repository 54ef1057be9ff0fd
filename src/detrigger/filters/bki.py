"""BKI: Chen & Dai, "Mitigating backdoor attacks in LSTM-based text classification systems by Backdoor Keyword
Identification" (Neurocomputing 2021).

A trigger word changes the model's sentence representation far more than an ordinary word when it is deleted,
and it does so in many texts. For every text, each word's importance is how far the last layer's sentence
vector moves when that word is deleted (L-infinity norm of the difference); the `top_words` most important
words of each text are collected, and a word's keyword score over a set of texts is its mean importance times
the log of how many texts have it among their top words (BKI's, and OpenBackdoor's, g(w) = mean f(w) x log n_w).
Texts containing a word whose score is above the threshold are rejected.

BKI is a *training-data* defence: the paper computes the keyword scores on the (possibly poisoned) training
set, finds the backdoor keyword and removes the training samples containing it before retraining. The
defender here holds a fine-tuned model, not its training set, so two forms are offered:
- `keywords_from="inputs"` (the default, the test-time form): the scores are computed over the texts being
  filtered, as one batch (a stream of inputs collected before deciding); a trigger shared by many incoming
  texts stands out the way it does in a poisoned training set. Its detection depends on how many of the
  incoming texts carry the trigger.
- `keywords_from="corpus"`: the scores come from texts passed as `corpus` (the suspect's training texts, when
  the defender has them: the paper's setting); incoming texts containing a keyword found there are rejected.

Departures: the paper removes only the top keyword; here every word scored above a threshold calibrated on
clean texts is a keyword (a five-word trigger needs five). The calibration computes the same statistics on
the held-out clean texts alone and picks the threshold at which `frr` of them would be rejected. Counts are
scaled to a set of 1,000 texts before the log, so the score does not grow with the batch size alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.evaluation.representations import sentence_vectors
from detrigger.filters.base import FilterConfig, InputFilter, register
from detrigger.progress import progress_bar

REFERENCE_SIZE = 1000  # counts are scaled to a set of this many texts


class BkiConfig(FilterConfig):
    keywords_from: Literal["inputs", "corpus"] = Field("inputs", description="where keyword scores are computed: "
                                                       "the texts being filtered, or the `corpus` texts given to fit")
    top_words: int = Field(5, ge=1, description="most important words kept per text (the paper's p = 5)")
    pooling: Literal["cls", "mean"] = Field("cls", description="the sentence vector: last-layer [CLS] state or mean")


def _key(word: str) -> str:
    return word.lower()


@register("bki", "BKI: words whose deletion moves the sentence vector most, across many texts; reject their texts")
class BkiFilter(InputFilter):
    config_class = BkiConfig
    config: BkiConfig

    def _fit(self, clean: TextDataset, corpus: Sequence[str], progress: bool | None) -> None:
        self.corpus_scores: dict[str, float] | None = None
        if self.config.keywords_from == "corpus":
            if not corpus:
                raise DetriggerError("bki: keywords_from 'corpus' needs the suspect's training texts (--bki-train)")
            self.corpus_scores = self.keyword_scores(corpus, progress)
            top = sorted(self.corpus_scores.items(), key=lambda kv: -kv[1])[:10]
            self.details["corpus_texts"] = len(corpus)
            self.details["corpus_top_keywords"] = [[w, round(s, 4)] for w, s in top]

    def importance(self, texts: Sequence[str], progress: bool | None = False) -> list[list[tuple[str, float]]]:
        """Per text, (word, importance) for each of its words: the L-inf change of the sentence vector when
        that word (one occurrence) is deleted."""
        words = [t.split() for t in texts]
        variants, owner = [], []
        for i, ws in enumerate(words):
            variants.append(" ".join(ws))
            owner.append(i)
            if len(ws) > 1:  # a one-word text has nothing left to compare without its word
                for j in range(len(ws)):
                    variants.append(" ".join(ws[:j] + ws[j + 1:]))
                    owner.append(i)
        vectors = np.zeros((0, 0), dtype=np.float32)
        chunk = 16 * self.config.batch_size
        with progress_bar(len(variants), "bki", "text", progress) as bar:
            parts = []
            for start in range(0, len(variants), chunk):
                parts.append(sentence_vectors(self.victim, variants[start:start + chunk], self.config.pooling,
                                              self.config.batch_size))
                bar.update(len(variants[start:start + chunk]))
            if parts:
                vectors = np.concatenate(parts)
        out, at = [], 0
        for ws in words:
            full = vectors[at]
            if len(ws) > 1:
                deltas = np.abs(vectors[at + 1:at + 1 + len(ws)] - full).max(axis=1)
                out.append(list(zip(ws, deltas.tolist())))
                at += 1 + len(ws)
            else:
                out.append([(w, 0.0) for w in ws])
                at += 1
        return out

    def keyword_scores(self, texts: Sequence[str], progress: bool | None = False) -> dict[str, float]:
        """g(w) = mean importance of w among the texts that have it in their top words x log10 of that count,
        the count scaled to REFERENCE_SIZE texts."""
        total: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for per_text in self.importance(texts, progress):
            best: dict[str, float] = {}
            for w, f in per_text:
                best[_key(w)] = max(best.get(_key(w), 0.0), f)
            for w, f in sorted(best.items(), key=lambda kv: -kv[1])[:self.config.top_words]:
                total[w] += f
                count[w] += 1
        scale = REFERENCE_SIZE / max(1, len(texts))
        return {w: total[w] / count[w] * math.log10(count[w] * scale) for w in total}

    def _text_scores(self, texts: Sequence[str], scores: dict[str, float]) -> np.ndarray:
        """A text's score: the highest keyword score among its words (-inf when none has one)."""
        return np.array([max((scores.get(_key(w), -np.inf) for w in t.split()), default=-np.inf) for t in texts])

    def calibration_scores(self, texts: list[str], progress: bool | None) -> np.ndarray:
        # the statistics of the clean held-out texts alone: what an attack-free batch looks like
        return self._text_scores(texts, self.keyword_scores(texts, progress))

    def score(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        scores = self.corpus_scores if self.corpus_scores is not None else self.keyword_scores(texts, progress)
        if self.threshold is not None:
            keywords = sorted((w for w, s in scores.items() if s > self.threshold), key=lambda w: -scores[w])
            self.details["keywords"] = keywords[:50]
            self.details["n_keywords"] = len(keywords)
        return self._text_scores(texts, scores)
