"""STRIP: Gao, Xu, Wang, Chen, Ranasinghe, Nepal, "STRIP: A Defence Against Trojan Attacks on Deep Neural
Networks" (ACSAC 2019), in its text form (Gao et al., "Design and Evaluation of a Multi-Domain Trojan Detection
Method on Deep Neural Networks", STRIP-ViTA, TDSC 2021).

Superimpose each input with clean texts several times and look at how the model's predictions spread: a
clean input's prediction follows whatever words were mixed in (high entropy), while a triggered input stays
on the target as long as its trigger survives (low entropy). Suspicion = minus the mean prediction entropy of
the perturbed copies.

Text superimposition, as in STRIP-ViTA and OpenBackdoor: a share `swap_ratio` of the input's word positions,
drawn at random, is overwritten with the most salient words (by TF-IDF) of a clean text drawn at random. The
threshold is set at a false rejection rate on held-out clean texts (the paper's rule).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.filters.base import FilterConfig, InputFilter, register
from detrigger.models.predict import predict_logits
from detrigger.progress import progress_bar


class StripConfig(FilterConfig):
    copies: int = Field(10, ge=1, description="perturbed copies per text (OpenBackdoor: 5; more copies, steadier "
                        "entropy)")
    swap_ratio: float = Field(0.5, gt=0, le=1, description="share of a text's words overwritten per copy "
                              "(OpenBackdoor's 0.5)")


def salient_words(texts: Sequence[str]) -> list[list[str]]:
    """Each text's distinct lower-cased words, most salient first by TF-IDF over `texts` (ties: text order)."""
    docs = [t.lower().split() for t in texts]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    out = []
    for d in docs:
        tf = Counter(d)
        first = {w: i for i, w in reversed(list(enumerate(d)))}
        out.append(sorted(tf, key=lambda w: (-tf[w] * math.log((1 + n) / (1 + df[w])), first[w])))
    return out


@register("strip", "STRIP: prediction entropy of the text superimposed with clean texts' words; low = triggered")
class StripFilter(InputFilter):
    config_class = StripConfig
    config: StripConfig

    def _fit(self, clean: TextDataset, corpus: Sequence[str], progress: bool | None) -> None:
        self.pool = [w for w in salient_words(clean.texts) if w]
        if not self.pool:
            raise DetriggerError(f"{clean.name}: no words in the clean texts to superimpose")
        self.details["pool_texts"] = len(self.pool)

    def perturb(self, text: str, rng: np.random.Generator) -> str:
        """One superimposed copy: `swap_ratio` of the word positions overwritten with a clean text's top words."""
        words = text.split()
        if not words:
            return text
        m = max(1, round(self.config.swap_ratio * len(words)))
        positions = rng.choice(len(words), size=m, replace=False)
        donor = self.pool[int(rng.integers(len(self.pool)))]
        for i, pos in enumerate(positions):
            words[pos] = donor[i % len(donor)]  # a short donor text is cycled
        return " ".join(words)

    def score(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed)
        copies = [self.perturb(t, rng) for t in texts for _ in range(self.config.copies)]
        with progress_bar(len(copies), "strip", "text", progress) as bar:
            logits = predict_logits(self.victim, copies, batch_size=self.config.batch_size, bar=bar)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
        return -entropy.reshape(len(texts), self.config.copies).mean(axis=1)
