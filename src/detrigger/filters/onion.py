"""ONION: Qi, Chen, Li, Yao, Liu, Sun, "ONION: A Simple and Effective Defense Against Textual Backdoor Attacks"
(EMNLP 2021).

An inserted trigger word is an outlier to a language model: deleting it lowers the text's perplexity a lot.
For each word w_i, the suspicion f_i = p_0 - p_i, where p_0 is the perplexity of the text and p_i that of the
text without w_i; the words with f_i above a threshold are deleted before the text reaches the classifier.
ONION is a purifier: it rejects nothing, it rewrites.

Departures from the paper:
- the paper's LM is GPT-2; none is available offline, so the default is the word n-gram Kneser-Ney model of
  `filters/lm.py`, estimated on the clean fitting texts plus the `corpus` texts given to `fit` (built-in
  corpora other than the evaluated one; docs/filters.md names them and gives the LM's perplexity). A Hugging
  Face causal LM folder can be given instead (`lm`).
- the paper tunes the threshold on clean validation data (OpenBackdoor's default is 0: every word whose removal
  lowers the perplexity goes); here it is set on held-out clean texts at a rate `frr` of *words* deleted
  (`unit="word"`, the default: the (1 - frr) quantile of all their words' suspicions), or of *texts* rewritten
  (`unit="text"`: the quantile of each text's largest suspicion). The FRR that `evaluate_filter` reports for
  ONION is always the share of clean texts rewritten (at least one word deleted), which at a 5% word rate is
  far above 5%. On MR with the n-gram LM, a 5% text rate deleted almost no trigger words (docs/filters.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.filters.base import FilterConfig, Filtered, InputFilter, register
from detrigger.filters.lm import CausalLM, NgramLM
from detrigger.progress import progress_bar


class OnionConfig(FilterConfig):
    lm: str | None = Field(None, description="a Hugging Face causal LM folder (e.g. GPT-2); default: the n-gram model")
    order: int = Field(3, ge=1, le=6, description="n-gram order of the offline LM")
    min_count: int = Field(1, ge=1, description="words seen fewer times in the LM text are <unk>; with 1 (the default) "
                           "an unseen word costs the uniform floor times its spelling, which ranked an inserted rare "
                           "word first about twice as often as 2 did on MR (docs/filters.md)")
    unit: Literal["word", "text"] = Field("word", description="what `frr` counts on the clean calibration texts: "
                                          "words deleted, or texts rewritten")


@register("onion", "ONION: delete the words whose removal lowers the text's LM perplexity the most")
class OnionFilter(InputFilter):
    purifier = True
    config_class = OnionConfig
    config: OnionConfig

    def _fit(self, clean: TextDataset, corpus: Sequence[str], progress: bool | None) -> None:
        if self.config.lm:
            self.lm: NgramLM | CausalLM = CausalLM(self.config.lm)
        else:
            self.lm = NgramLM([*clean.texts, *corpus], order=self.config.order, min_count=self.config.min_count)
        self.details["lm"] = self.lm.describe()

    def suspicions(self, texts: Sequence[str], progress: bool | None = False) -> list[np.ndarray]:
        """Per text, f_i for each of its whitespace-separated words (a one-word text: none is ever deleted)."""
        out = []
        with progress_bar(len(texts), "onion", "text", progress) as bar:
            for t in texts:
                words = t.split()
                if len(words) < 2:
                    out.append(np.full(len(words), -np.inf))
                else:
                    base, without = self.lm.word_perplexities(words)
                    out.append(base - np.asarray(without))
                bar.update(1)
        return out

    def calibration_scores(self, texts: list[str], progress: bool | None) -> np.ndarray:
        if self.config.unit == "text":
            return self.score(texts, progress)
        found = [f for f in self.suspicions(texts, progress) if len(f)]
        return np.concatenate(found) if found else np.zeros(0)

    def score(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        """A text's score: its largest word suspicion (it is rewritten when that is above the threshold)."""
        return np.array([f.max() if len(f) else -np.inf for f in self.suspicions(texts, progress)])

    def apply(self, texts: Sequence[str], progress: bool | None = False) -> Filtered:
        if self.threshold is None:
            raise DetriggerError("onion: the filter is not fitted (call fit with clean texts first)")
        texts = list(texts)
        out, flagged, scores = [], [], []
        for t, f in zip(texts, self.suspicions(texts, progress)):
            words = t.split()
            drop = f > self.threshold
            out.append(" ".join(w for w, d in zip(words, drop) if not d) if drop.any() else t)
            flagged.append(bool(drop.any()))
            scores.append(f.max() if len(f) else -np.inf)
        return Filtered(out, np.ones(len(texts), dtype=bool), np.asarray(flagged, dtype=bool), np.asarray(scores))


LM_CORPORA = ("bbc", "amazon", "nyt", "tweets")  # the n-gram LM's default text besides the clean texts


def lm_corpus(sources: Sequence[str] | None, data: str, split: str, **columns: str) -> list[str]:
    """Text for ONION's n-gram LM: `sources` (default: the built-in `LM_CORPORA` but the evaluated `data`),
    never the evaluated data set's held-out `split`."""
    from detrigger.data import load_data

    texts: list[str] = []
    for source in sources if sources is not None else [c for c in LM_CORPORA if c != data]:
        if source == data and split != "train":
            raise DetriggerError(f"--lm-text {source}: the evaluated data set; the LM must not read its {split} split")
        texts += list(load_data(source, **columns).texts)
    return texts
