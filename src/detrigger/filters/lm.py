"""Language models for ONION: an offline word n-gram model, or a Hugging Face causal LM folder if the user has one.

No GPT-2 (or any other LM) weights are available offline here, so the default is a word n-gram model with
interpolated modified Kneser-Ney smoothing (Chen & Goodman 1998), estimated on clean text the defender holds.
It is open-vocabulary: a word seen fewer than `min_count` times in training is `<unk>`, and an unknown word's
probability is P(<unk> | context) x P(spelling), the spelling scored by a character bigram model (add-one
smoothed, with room for characters never seen) estimated on the words that became `<unk>`. A word of unusual
spelling (a rare letter pair, a Cyrillic look-alike, a blank-looking symbol) is therefore improbable, as it is
to a neural LM, instead of costing a flat `<unk>` price. docs/filters.md gives its perplexity on held-out text.

Text is lower-cased and cut into words and punctuation marks (`tokens`); `log_probs` gives each token's
natural-log probability and `perplexity` the exponentiated mean over the tokens and the end of the sentence.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detrigger.errors import DetriggerError

_TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def tokens(text: str) -> list[str]:
    """Lower-cased words (letters and digits of any script, inner apostrophes kept) and single other characters."""
    return _TOKEN.findall(text.lower())


class SpellingModel:
    """P(word's characters) under a character bigram model with add-one smoothing over the seen characters plus
    one slot for every unseen character (`unseen` of them assumed possible)."""

    def __init__(self, words: Sequence[str], unseen: int = 10_000) -> None:
        self.pairs: Counter[tuple[str, str]] = Counter()
        self.left: Counter[str] = Counter()
        for w in words:
            chars = ["^", *w, "$"]
            self.pairs.update(zip(chars, chars[1:]))
            self.left.update(chars[:-1])
        self.alphabet = {c for pair in self.pairs for c in pair}
        self.size = len(self.alphabet) + 1  # + one bucket for all unseen characters
        self.unseen = unseen

    def log_prob(self, word: str) -> float:
        chars = ["^", *word, "$"]
        lp = 0.0
        for a, b in zip(chars, chars[1:]):
            p = (self.pairs[a, b] + 1) / (self.left[a] + self.size)
            if b not in self.alphabet:  # the unseen-character bucket is shared by `unseen` characters
                p /= self.unseen
            lp += math.log(p)
        return lp


class NgramLM:
    """Interpolated modified Kneser-Ney word n-gram model (order >= 1), open-vocabulary through SpellingModel."""

    def __init__(self, texts: Sequence[str], order: int = 3, min_count: int = 2) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        sentences = [tokens(t) for t in texts]
        freq = Counter(w for s in sentences for w in s)
        if not freq:
            raise DetriggerError("the n-gram language model has no training text")
        self.vocab = {w for w, c in freq.items() if c >= min_count}
        self.spelling = SpellingModel([w for w, c in freq.items() if c < min_count] or list(freq))
        self.n_train_tokens = sum(freq.values())
        # counts[n][context][word] for n = 1..order; the highest order gets raw counts, lower orders
        # continuation counts (number of distinct left contexts), as Kneser-Ney prescribes
        raw: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for s in sentences:
            seq = [BOS] * (order - 1) + [w if w in self.vocab else UNK for w in s] + [EOS]
            for i in range(order - 1, len(seq)):
                raw[tuple(seq[i - order + 1:i])][seq[i]] += 1
        self.counts: list[dict[tuple[str, ...], Counter[str]]] = [dict() for _ in range(order + 1)]
        self.counts[order] = dict(raw)
        for n in range(order, 1, -1):  # continuation counts of order n-1 from the n-gram types of order n
            lower: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
            for ctx, words in self.counts[n].items():
                for w in words:
                    lower[ctx[1:]][w] += 1
            self.counts[n - 1] = dict(lower)
        self.discounts = [self._discounts(n) for n in range(order + 1)]
        self.totals = [{ctx: sum(c.values()) for ctx, c in self.counts[n].items()} for n in range(order + 1)]
        # how many words follow a context once, twice, three or more times (for the back-off weight)
        self.nk = [{ctx: (sum(v == 1 for v in c.values()), sum(v == 2 for v in c.values()),
                          sum(v >= 3 for v in c.values())) for ctx, c in self.counts[n].items()}
                   for n in range(order + 1)]
        self.n_words = len(self.counts[1].get((), {}))  # the uniform floor over the predicted types (<unk>, </s> in)
        self._cache: dict[tuple[str, ...], float] = {}

    def _discounts(self, n: int) -> tuple[float, float, float]:
        if n == 0:
            return (0.0, 0.0, 0.0)
        of = Counter(v for c in self.counts[n].values() for v in c.values() if v <= 4)
        n1, n2, n3, n4 = (of[i] for i in (1, 2, 3, 4))
        if not (n1 and n2 and n3 and n4):
            return (0.5, 0.75, 0.9)  # too little text for the estimate: a usual middle
        y = n1 / (n1 + 2 * n2)
        return (max(0.0, 1 - 2 * y * n2 / n1), max(0.0, 2 - 3 * y * n3 / n2), max(0.0, 3 - 4 * y * n4 / n3))

    def _prob(self, context: tuple[str, ...], word: str) -> float:
        """P(word | context) with len(context) = order - 1 at most, interpolated down to a uniform floor."""
        key = (*context, word)
        if key in self._cache:
            return self._cache[key]
        n = len(context) + 1
        lower = self._prob(context[1:], word) if n > 1 else 1.0 / self.n_words
        words = self.counts[n].get(context)
        if not words:
            p = lower
        else:
            c = words.get(word, 0)
            d1, d2, d3 = self.discounts[n]
            d = 0.0 if c == 0 else d1 if c == 1 else d2 if c == 2 else d3
            total = self.totals[n][context]
            k1, k2, k3 = self.nk[n][context]
            gamma = (d1 * k1 + d2 * k2 + d3 * k3) / total
            p = max(c - d, 0.0) / total + gamma * lower
        if len(self._cache) < 2_000_000:
            self._cache[key] = p
        return p

    def log_probs(self, toks: Sequence[str], spell: bool = True) -> list[float]:
        """Natural-log probability of each token and of the sentence end, each given its n-gram context; with
        `spell=False` an unknown word costs only P(<unk> | context) (the closed-vocabulary figure)."""
        seq = [BOS] * (self.order - 1)
        out = []
        for w in [*toks, EOS]:
            known = w in self.vocab or w == EOS
            unit = w if known else UNK
            lp = math.log(self._prob(tuple(seq[len(seq) - self.order + 1:]) if self.order > 1 else (), unit))
            if not known and spell:
                lp += self.spelling.log_prob(w)
            out.append(lp)
            seq.append(unit)
        return out

    def perplexity(self, texts: Sequence[str] | str, spell: bool = True) -> float:
        """exp(-mean log probability) over the tokens and sentence ends of one text or several (`spell`: as in
        `log_probs`)."""
        texts = [texts] if isinstance(texts, str) else texts
        lps = [lp for t in texts for lp in self.log_probs(tokens(t), spell)]
        return math.exp(-sum(lps) / len(lps))

    def word_perplexities(self, words: Sequence[str]) -> tuple[float, list[float]]:
        """ONION's quantities for a whitespace-split text: the perplexity of the whole text and, per word, of the
        text with that word deleted."""
        per_word = [tokens(w) for w in words]
        whole = [t for ts in per_word for t in ts]
        base = math.exp(-np.mean(self.log_probs(whole)))
        without = []
        for i in range(len(words)):
            rest = [t for j, ts in enumerate(per_word) if j != i for t in ts]
            without.append(math.exp(-np.mean(self.log_probs(rest))))
        return base, without

    def describe(self) -> dict:
        return {"kind": "word n-gram, interpolated modified Kneser-Ney", "order": self.order,
                "vocabulary": len(self.vocab), "training_tokens": self.n_train_tokens}


class CausalLM:
    """A Hugging Face causal language model folder (GPT-2 and the like), for users who have one. Perplexity over
    the model's tokens of the text (with the beginning-of-text token prepended when the tokenizer has one). The
    folder's own code never runs and only safetensors weights are read."""

    def __init__(self, folder: str | Path, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise DetriggerError(f"{folder}: no config.json, not a Hugging Face model folder")
        if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
            raise DetriggerError(f"{folder}: no safetensors weights (model.safetensors)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False,
                                                              use_safetensors=True).eval()
        except (ValueError, OSError) as exc:
            reason = " ".join(str(exc).split())
            raise DetriggerError(f"{folder}: cannot load a causal language model ({reason})") from None
        self.torch = torch
        self.batch_size = batch_size
        self.folder = str(folder)

    def _perplexities(self, texts: Sequence[str]) -> list[float]:
        torch = self.torch
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = [bos + tok(t, add_special_tokens=False)["input_ids"][:1000]
                   for t in texts[start:start + self.batch_size]]
            width = max(2, max(len(x) for x in ids))
            batch = torch.zeros((len(ids), width), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for i, x in enumerate(ids):
                batch[i, :len(x)] = torch.as_tensor(x)
                mask[i, :len(x)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=batch, attention_mask=mask).logits.float()
            lp = logits[:, :-1].log_softmax(-1).gather(2, batch[:, 1:, None])[..., 0]
            m = mask[:, 1:].float()
            nll = -(lp * m).sum(1) / m.sum(1).clamp_min(1)
            out += [math.exp(v) if n > 0 else float("inf") for v, n in zip(nll.tolist(), m.sum(1).tolist())]
        return out

    def perplexity(self, texts: Sequence[str] | str) -> float:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return float(np.exp(np.mean(np.log(self._perplexities(texts)))))

    def word_perplexities(self, words: Sequence[str]) -> tuple[float, list[float]]:
        variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
        ppl = self._perplexities(variants)
        return ppl[0], ppl[1:]

    def describe(self) -> dict:
        return {"kind": "causal LM folder", "folder": self.folder}
