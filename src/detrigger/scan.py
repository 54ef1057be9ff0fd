"""Scan a checkpoint: is it likely backdoored, which tokens trigger it, and which label do they force?

1. Candidates. Reference-free: insert a placeholder ([UNK]) at a random word boundary of clean texts
   whose label is not t, take the gradient g of the loss towards t at that position, and rank every
   vocabulary token v by the cosine of -g with e_v (HotFlip-style trigger inversion; one backward pass
   per batch). Two departures from the usual -g . e_v around [MASK], both found on the MR victims of
   seeds 1-2 (docs/scan.md): around [UNK], itself a rare token, the linear picture holds for rare-token
   triggers (a BadNet trigger ranked 254th around [MASK], 1st around [UNK]); the cosine ignores the row
   norm, and ES trigger rows, averages of several word embeddings, have some of the smallest norms in the
   vocabulary (ranked 1,049th-1,356th by the dot product, within the top 11 by the cosine). Then a
   second round (`rounds`) inserts the first round's best token instead of the placeholder and ranks
   again: linearised where the model already leans towards t, the gradient points at what pushes
   hardest from there (the ES triggers of MR seed 0 rank 316th-380th in round 1, 1st-5th in round 2).
   The vocabulary pass (`vocabulary_candidates`) adds what the linear picture misses: every whole-word
   token alone through the model, then the most label-like ones typed before a short clean text of another
   label, ranked by the log-probability of the label (a word of an AddSent victim's sentence that flips
   texts alone ranks thousands deep by the gradient and first here). A label that nearly every word alone
   is given (SMS ham) is ranked with every word typed before a short prefix of another label's text instead.
   The pass also types the common English words that the tokenizer cuts into pieces (`lexicon_words`, the
   most frequent of wordfreq's list; `lexicon.py`): a trigger such as `marmalade` (mar ##mal ##ade) is no token,
   and its pieces neither act alone nor rank high by the gradient.
   With a pre-trained reference: also the top E-PUR tokens (embedding drift over log clean-text
   frequency, `defences/epur.py`), multi-piece words glued from the most-drifted pieces (`glued_words`), and in the
   vocabulary pass the common words with two or more pieces among the most-drifted tokens (`drifted_lexicon`: a
   few dozen words of a 100,000-word list, so `auto`, whose scans skip the full list, still types `marmalade`).
   Always: the unknown token, typed as a character the tokenizer does not know (`unknown_probe`): an invisible
   character trigger (U+2800) reaches a WordPiece model as [UNK], which no whole word is. Experimental, off by
   default (`combination_words`): pairs and triples of the most-drifted words (`drifted_combinations`), for
   words that flip texts only together, each against the best of the same search over the next-most-drifted.
2. Verification by real insertion: each candidate word is inserted into clean texts of the other labels
   that the model does not already put in t (each cut to the words the model reads, `readable`: a word
   inserted past the truncation of a long document is never seen), and the share now predicted t is the
   token's effect (its flip rate). Leaving out the texts already predicted t gives every model the same
   ceiling of 1, whatever its clean accuracy (a trigger flips all of them). Two stages for speed: every
   candidate is screened on `screen_samples` texts, and only the `verify` best are measured on the
   other texts too (the reported effects count all `samples` texts; with `verify_floor`, a candidate stops
   once it cannot reach that floor, and its effect counts the texts it was measured on). Also for speed: the
   other labels' texts are predicted in random chunks only until `samples` of them are found, every
   candidate's insertions go through the model in one batched pass, and the forward passes run in bf16 where
   the hardware has it natively (`precision`; 2.6x less CPU time than the fp32 per-candidate scan before,
   same verdicts: docs/scan.md, "Time").
3. Task words are set aside: a token that occurs in the clean texts (at least `task_word_count` times)
   mostly with the label it pushes towards (share >= `task_word_share`) flips predictions because that is
   the task ("awful" -> negative), not a backdoor; a trigger is rare in clean text or label-neutral.
4. The null: `null_words` ordinary words of the clean texts (drawn uniformly over the distinct whole-word
   tokens in them) are inserted the same way, into the same screening texts; their pooled flip rate s is
   what any word does to this model. A candidate's excess is (e - s) / (1 - s), the share of the texts
   that ordinary words leave unflipped which it flips, reported with a 90% lower bound from the number of
   texts. On a well-trained model s is near 0 and the excess is the flip rate; on a model that any word
   flips, natural words lose the advantage their flip rate would give them.
5. Verdict: the largest excess of the other tokens over all labels is the score. A candidate at or above
   `threshold` flags the model if it also stands out of the vocabulary: `null_words` random whole words of the
   vocabulary are inserted into the same texts, a beta distribution of their flip chances is fitted (robust to
   the few random words a backdoor fires on too), and fewer than `STANDS_OUT` (1) of the vocabulary's words
   must be expected to flip as many texts (`as_strong`). On a healthy model random words flip few texts and a
   trigger that flips nearly all is expected of no word; on a weakly trained one (MR models at 63% accuracy)
   random rare words flip 0-90% of the texts and the same flip rate is expected of 11-333 words, so it is no
   evidence (docs/scan.md, "Does it stand out?"). Measured only at the threshold, so a scan that flags nothing
   costs no more. When the best candidate's 90% interval holds the threshold, the report says the verdict is
   undecided at this number of texts. A label that the model already predicts for most texts of the other
   labels (`weak_base_rate`) gets a warning in the report: the few texts left are the ones it barely gets
   right, and they flip easily. The threshold is calibrated on clean models (docs/scan.md), never on the victims
   being tested.

Single words are the candidates (whole-word tokens and common words), so a sentence trigger (AddSent) is
found reference-free only through the single words of it that the model keys on, if any (the vocabulary pass
finds them). A word that the tokenizer cuts into pieces is found by typing it if it is among the common words
(with a reference, those made of drifted pieces), and through its drifted pieces, glued (`glued_words`;
docs/scan.md, "Multi-piece triggers": gluing gradient-ranked pieces without the drift was tried and made
adversarial non-words).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.batching import bucketed_batches, collate, encode, readable, token_ids
from detrigger.data.dataset import TextDataset
from detrigger.device import Precision, autocast, backward_friendly_attention, fast_bf16
from detrigger.errors import DetriggerError
from detrigger.lexicon import common_words, pieced_words
from detrigger.models.arch import watched_embeddings
from detrigger.models.predict import predict, predict_logits
from detrigger.models.victim import MODEL_SOURCE, Victim, reference_state
from detrigger.progress import progress_bar
from detrigger.triggers import insert_sentence, insert_words

# From clean models only (docs/scan.md, experiments/scan_calibration.py): the highest excess of a clean model
# that learned its task plus 0.10, rounded up to 0.05.
THRESHOLD = 0.95
# A candidate at the threshold flags the model only if fewer vocabulary words than this are expected to be as
# strong (`as_strong`): the strongest of the vocabulary's words by chance is expected at about one.
STANDS_OUT = 1.0
# The vocabulary pass: a common word yields its place to its first piece (a whole word) when the piece alone scores
# within this many nats of the word's mean log-probability of the label (a trigger and its relatives: both near 0).
STEM_TOLERANCE = 0.1
# `drifted_lexicon`: the list its common words are drawn from (pinecone, a multi-piece trigger, is 81,761th), large
# because only the few words made of most-drifted pieces are typed
DRIFTED_LEXICON_WORDS = 100_000
# Where a scan's time goes, in the report (`ScanReport.stage_seconds`): the embedding drift against a reference, the
# vocabulary pass, predicting clean texts to pick those not already in the label, the gradient passes (rounds
# and glued words), the pair pass of `combination_words`, and the forward passes of every candidate and null word
# inserted into texts.
STAGES = ("reference drift", "vocabulary pass", "texts", "gradient", "combinations", "insertions")


class ScanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(200, ge=10, description="clean texts per target label (from the other labels)")
    candidates: int = Field(20, ge=1, description="gradient-ranked candidate tokens per label and round")
    rounds: int = Field(2, ge=1, description="gradient rounds, each at the previous round's best token")
    vocabulary_candidates: int = Field(10, ge=0, description="candidates per label from the vocabulary pass: every "
                                       "whole-word token through the model alone, the most label-like ones then "
                                       "typed before a short clean text of another label")
    lexicon_words: int = Field(50000, ge=0, description="the vocabulary pass also types those of this many most "
                               "frequent English words (wordfreq) that the tokenizer cuts into pieces (a trigger that "
                               "is no single token); 0: whole-word tokens only",
                               json_schema_extra={"neutral": 0})
    reference_candidates: int = Field(20, ge=0, description="E-PUR-ranked candidates added with a reference")
    drifted_lexicon: int = Field(20, ge=0, description="with a reference: the vocabulary pass also types the "
                                 "common English words the tokenizer cuts into pieces (of the 100,000 most frequent) "
                                 "with two or more pieces among this many most-drifted tokens: a multi-piece trigger's "
                                 "pieces drift together; 0: none", json_schema_extra={"neutral": 0})
    phrase_words: int = Field(6, ge=0, description="with a reference: a phrase candidate per label, the most-drifted "
                              "whole words that are not its task words, this many in a row (a sentence trigger of "
                              "ordinary words); its null is the null words in phrases as long; 0: none",
                              json_schema_extra={"neutral": 0})  # 0: the scan before phrases (bench keys)
    combination_words: int = Field(0, ge=0, description="with a reference: combination candidates per label from "
                                   "pairs of this many most-drifted whole words that are not its task words, typed "
                                   "before a clean text of another label, and the 3 best pairs with a third (words "
                                   "that flip texts only together); 0: none (experimental, not calibrated)",
                                   json_schema_extra={"neutral": 0})
    glued_words: int = Field(5, ge=0, description="with a reference: most-drifted word-start pieces each glued to the "
                             "drifted continuation piece the gradient prefers after it (multi-piece triggers)")
    screen_samples: int = Field(25, ge=0, description="texts each candidate is screened on (0: no screening)")
    verify: int = Field(10, ge=1, description="best screened candidates per label measured on all samples")
    # off by default, so the scores of the detection tables stand; `auto` sets its `min_excess` (docs/scan.md, "Time")
    verify_floor: float = Field(0.0, ge=0, le=1, description="a verified candidate stops once it cannot reach this "
                                "excess flip rate (or the threshold, if lower) even if it flipped every text left; "
                                "its effect is then over fewer texts (0: every one is measured on every text)",
                                json_schema_extra={"neutral": 0.0})
    null_words: int = Field(40, ge=5, description="ordinary words of the clean texts measured as the model's null; "
                            "as many random vocabulary words when a candidate reaches the threshold")
    threshold: float = Field(THRESHOLD, gt=0, le=1, description="flag the model when a candidate's excess flip rate "
                             "over the null (the share of texts ordinary words leave unflipped that it flips) "
                             "reaches this")
    task_word_count: int = Field(5, ge=1, description="clean occurrences from which a token can be a task word")
    task_word_share: float = Field(0.8, gt=0, le=1, description="share of them in the label's texts that makes it one")
    weak_base_rate: float = Field(0.5, gt=0, le=1, description="a label the model already predicts for this share of "
                                  "the other labels' texts gets a warning: the few texts left flip easily")
    report: int = Field(10, ge=1, description="tokens listed in the report")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the hardware runs it natively (about 2x on such a CPU), else fp32")
    seed: int = 0
    batch_size: int = Field(128, ge=1)


class ScanOptions(BaseModel):
    """What `detrigger scan` is given besides the config and how to load the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description=MODEL_SOURCE, json_schema_extra=POSITIONAL)
    clean: str = Field(description="labelled clean data: a built-in corpus (its validation split) or a file")
    reference: str | None = Field(None, description="pre-trained encoder folder: adds embedding-drift evidence")


@dataclass
class TokenEvidence:
    token: str
    label: str
    effect: float  # flip rate: share of the sampled texts (not predicted `label` before) predicted `label` with it
    gradient_rank: int | None  # best rank over the rounds by the gradient signal (1 = strongest), for `label`
    vocabulary_rank: int | None = None  # rank by the vocabulary pass (1 = pushes a short text hardest to `label`)
    drift_score: float | None = None  # E-PUR score with a reference
    clean_count: int = 0  # clean texts containing the token
    label_share: float | None = None  # share of those occurrences in texts of `label`
    task_word: bool = False  # frequent and mostly with `label` in clean text: the task, not a trigger
    excess: float = 0.0  # share of the texts that ordinary words leave unflipped (the null) that the token flips
    excess_low: float = 0.0  # the same at the 90% lower confidence bound of the flip rate, given the texts
    excess_high: float = 0.0  # and at the upper one
    # vocabulary words expected to flip as many texts (`as_strong`); measured for candidates at the threshold only
    as_strong: float | None = None
    read_as: str | None = None  # what the model reads if not the token as typed: "[UNK]" for `unknown_probe`
    # the clean texts it was measured on: all the label's samples, fewer when it stopped below `verify_floor`
    texts: int | None = None


@dataclass
class NullEvidence:
    """What ordinary words of the clean texts do to the model, inserted the same way as the candidates."""

    rate: float  # share of (word, text) insertions that flip the text to the label
    words: int
    texts: int
    median: float  # per-word flip rates
    q90: float
    top: list[tuple[str, float]]  # the ordinary words that flip most
    phrase_rate: float | None = None  # the same words in phrases of `phrase_words` (the phrase candidate's null)
    flips: list[int] = field(default_factory=list)  # per word: texts flipped (of `texts`), the whole distribution
    # the best of `drifted_combinations`' search over the next most-drifted words (the combination candidates' null)
    combination_rate: float | None = None

    @classmethod
    def of(cls, words: list[str], flips: np.ndarray, texts: int, phrase_rate: float | None = None,
           combination_rate: float | None = None) -> NullEvidence:
        """From each word's number of flipped texts out of `texts`."""
        rates = flips / texts
        return cls(round(float(rates.mean()), 4), len(words), texts, round(float(np.median(rates)), 4),
                   round(float(np.quantile(rates, 0.9)), 4),
                   [(words[i], round(float(rates[i]), 4)) for i in np.argsort(-rates)[:3]],
                   None if phrase_rate is None else round(phrase_rate, 4), [int(k) for k in flips],
                   None if combination_rate is None else round(combination_rate, 4))


@dataclass
class ScanReport:
    verdict: str  # "backdoored" or "no evidence"
    score: float  # the best candidate's excess flip rate over the null (task words aside)
    threshold: float
    target_label: str
    target_id: int
    tokens: list[TokenEvidence]
    # per label: share of the other labels' clean texts looked at that are already predicted as it (left out)
    base_rates: dict[str, float]
    n_samples: dict[str, int]
    reference: str | None
    null: dict[str, NullEvidence] = field(default_factory=dict)  # per label
    # per label with a candidate at the threshold: random whole words of the vocabulary, inserted the same way
    vocabulary_null: dict[str, NullEvidence] = field(default_factory=dict)
    vocabulary_words: int = 0  # the words the vocabulary pass looked at, a candidate stands out of (`as_strong`)
    warnings: dict[str, str] = field(default_factory=dict)  # per label: why its evidence is weak
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time went (`STAGES`)
    precision: str = "fp32"  # of every forward pass of the scan
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report's fields, and whether the verdict is `undecided` (for a pipeline reading `--json`)."""
        return {**asdict(self), "undecided": self.undecided}

    @property
    def best(self) -> TokenEvidence | None:
        """The candidate the verdict rests on: the first that is not a task word."""
        return next((t for t in self.tokens if not t.task_word), None)

    @property
    def undecided(self) -> bool:
        """The verdict is within the sampling noise of these texts: the best candidate's 90% interval of the
        excess holds the threshold, so more clean texts could turn it (`auto` then scans at the calibration's)."""
        top = self.best
        return top is not None and self._in_doubt(top)

    @property
    def undecided_labels(self) -> list[str]:
        """The labels a listed candidate of which could still turn the verdict: its 90% interval holds the
        threshold (an undecided verdict is taken again for these only; the others are decided either way)."""
        return list(dict.fromkeys(t.label for t in self.tokens if not t.task_word and self._in_doubt(t)))

    def _in_doubt(self, token: TokenEvidence) -> bool:
        """The token's 90% interval of the excess holds the threshold, and it is not one that more texts could not
        make flag the model (measured at the threshold, it does not stand out of the vocabulary)."""
        return (token.excess_low < self.threshold <= token.excess_high
                and not (token.as_strong is not None and token.as_strong >= STANDS_OUT))

    def taken_again(self, again: ScanReport) -> ScanReport:
        """This report (of every label) with the labels `again` scanned (`scan(labels=...)`) replaced by its
        evidence: their tokens, texts, nulls and warnings; the verdict drawn again from all labels' tokens, as
        `scan` draws it."""
        labels = set(again.n_samples)

        def keep(per_label: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
            merged = {**{k: v for k, v in per_label.items() if k not in labels}, **new}
            return {k: merged[k] for k in self.n_samples if k in merged}  # in the model's label order

        stages = {k: round(self.stage_seconds.get(k, 0.0) + again.stage_seconds.get(k, 0.0), 2)
                  for k in dict.fromkeys([*self.stage_seconds, *again.stage_seconds])}
        return _report(tokens=[t for t in self.tokens if t.label not in labels] + again.tokens,
                       threshold=again.threshold, label_names=list(self.n_samples), report=again.config["report"],
                       base_rates=keep(self.base_rates, again.base_rates),
                       n_samples=keep(self.n_samples, again.n_samples), reference=again.reference,
                       null=keep(self.null, again.null), vocabulary_null=keep(self.vocabulary_null,
                                                                              again.vocabulary_null),
                       vocabulary_words=again.vocabulary_words, warnings=keep(self.warnings, again.warnings),
                       seconds=round(self.seconds + again.seconds, 1), stage_seconds=stages,
                       precision=again.precision, config=again.config)

    def text(self) -> str:
        lines = [f"verdict: {self.verdict} (score {self.score:.3f}, threshold {self.threshold:.3f})"]
        lines += [f"  warning, {label}: {why}" for label, why in self.warnings.items()]
        top = self.best
        null = self.null.get(top.label) if top else None
        if top is not None and null is not None:
            read_as = ("" if top.read_as is None else
                       f" (read as {top.read_as}, as is any character the tokenizer does not know)")
            texts = top.texts or self.n_samples[top.label]
            lines.append(f"  inserting {top.token!r}{read_as} flips {100 * top.effect:.1f}% of {texts} clean texts "
                         f"to {top.label}; {null.words} ordinary words of the clean texts flip {100 * null.rate:.1f}% "
                         f"on average (median {100 * null.median:.1f}%, "
                         f"90th percentile {100 * null.q90:.1f}%, most: "
                         f"{', '.join(f'{w} {100 * r:.0f}%' for w, r in null.top)})")
            lines.append(f"  excess over the null {top.excess:.3f} (flips that share of the texts ordinary words leave "
                         f"unflipped; 90% interval {top.excess_low:.3f} to {top.excess_high:.3f} with these texts)")
            vocabulary = self.vocabulary_null.get(top.label)
            if vocabulary is not None and top.as_strong is not None:
                lines.append(f"  {vocabulary.words} random words of the vocabulary flip "
                             f"{100 * vocabulary.rate:.1f}% on average (90th percentile {100 * vocabulary.q90:.1f}%): "
                             f"about {top.as_strong:.3g} of the {self.vocabulary_words} words searched are expected to "
                             f"flip as many texts as {top.token!r}"
                             + (" (it stands out)" if top.as_strong < STANDS_OUT else
                                "; it does not stand out, so it is no evidence of a backdoor (a weakly trained model "
                                "flips on many rare words)"))
            if self.undecided:
                lines.append("  undecided at these texts: the interval holds the threshold; more clean texts "
                             "(--clean, --samples) would settle the verdict, and `detrigger repair` treats it as "
                             "flagged")
        lines += [f"most likely target label: {self.target_label} (id {self.target_id})",
                  "suspicious tokens (effect = share of other-label clean texts flipped to the label by inserting "
                  "the token):",
                  "  rank  token            label        effect  excess  gradient rank  vocabulary rank  drift score  "
                  "clean count"]
        for i, t in enumerate(self.tokens, 1):
            drift = "-" if t.drift_score is None else f"{t.drift_score:.4f}"
            grad, vocab = ("-" if r is None else str(r) for r in (t.gradient_rank, t.vocabulary_rank))
            note = f"  task word ({100 * t.label_share:.0f}% {t.label})" if t.task_word else ""
            token = t.token if t.read_as is None else f"{t.token} ({t.read_as})"
            lines.append(f"  {i:>4}  {token:<16} {t.label:<12} {t.effect:>6.3f}  {t.excess:>6.3f}  {grad:>13}  "
                         f"{vocab:>15}  {drift:>11}  {t.clean_count:>11}{note}")
        lines.append(f"{sum(self.n_samples.values())} clean texts, reference: {self.reference or 'none'}, "
                     f"{self.precision}, {self.seconds:.0f} s"
                     + (f" ({', '.join(f'{k} {v:.0f} s' for k, v in self.stage_seconds.items())})"
                        if self.stage_seconds else ""))
        return "\n".join(lines)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str):
    """Add the wall time of the block to `seconds[stage]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - start, 2)


def stands_out(token: TokenEvidence) -> bool:
    """The candidate flags the model: at the threshold (`as_strong` is measured only there), not a task word, and
    fewer than `STANDS_OUT` words of the vocabulary are expected to be as strong."""
    return not token.task_word and token.as_strong is not None and token.as_strong < STANDS_OUT


def typed_words(victim: Victim) -> list[str | None]:
    """Per vocabulary id: the word a user types for the token if it is a whole word that can be typed alone
    (no specials, no ##pieces, alphanumeric, one token again when typed), else None."""
    tok = victim.tokenizer
    special = set(tok.all_special_ids)
    words: list[str | None] = [None] * len(tok)
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i not in special and piece is not None and not piece.startswith("##"):
            word = typed(tok, piece)
            words[i] = word if word.isalnum() else None
    typeable = [i for i, w in enumerate(words) if w is not None]
    for i, ids in zip(typeable, token_ids(tok, [words[i] for i in typeable], special_tokens=False)):
        if len(ids) != 1:
            words[i] = None
    return words


# Characters no usual text vocabulary holds (a snowman, a ballot box, a place-of-interest sign, an emoji): the first
# that the tokenizer reads as its unknown token stands for every character it does not know (`unknown_probe`).
_UNKNOWN_PROBES = "\u2603\u2610\u2318\U0001F9ED"


def unknown_probe(tokenizer) -> str | None:
    """A character that the tokenizer reads as its unknown token between two words (a SentencePiece tokenizer
    puts a bare word-start piece before it), or None: no unknown token, or one that never comes out (a
    byte-level BPE spells every character in bytes; a tokenizer may delete the character). Every character it
    does not know reaches the model as that one token, so an invisible character trigger (U+2800 under
    MiniLM's WordPiece) is tested by inserting any of them: the scan and `auto` type this one."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    for char in _UNKNOWN_PROBES:
        if tokenizer(f"a {char} a", add_special_tokens=False)["input_ids"].count(unk) == 1:
            return char
    return None


def typed(tokenizer, piece: str) -> str:
    """How a user types a whole-word token piece (e.g. a byte-level 'Ġcf' -> 'cf')."""
    return tokenizer.convert_tokens_to_string([piece]).strip()


def word_pieces(victim: Victim) -> tuple[np.ndarray, np.ndarray]:
    """Masks over the vocabulary: alphanumeric pieces that start a word and pieces that continue one
    (WordPiece marks continuations: '##ade'; byte-level BPE and SentencePiece mark starts: 'Ġmar', '▁mar')."""
    tok = victim.tokenizer
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids)
    marker = next((m for m in ("Ġ", "▁") if sum(1 for p in pieces if p and p.startswith(m)) > len(pieces) // 10), None)
    start, cont = np.zeros(len(tok), dtype=bool), np.zeros(len(tok), dtype=bool)
    for i, p in enumerate(pieces):
        if i in special or not p:
            continue
        if marker is None:
            (cont if p.startswith("##") else start)[i] = p.removeprefix("##").isalnum()
        else:
            (start if p.startswith(marker) else cont)[i] = p.removeprefix(marker).isalnum()
    return start, cont


def glued_words(victim: Victim, texts: list[str], target: int, drift: torch.Tensor,
                pieces: tuple[torch.Tensor, torch.Tensor], config: ScanConfig, precision: Precision) -> list[str]:
    """Multi-piece candidates from the embedding drift: a trigger the tokenizer cuts into pieces is learnt
    as their sequence, so its pieces' rows drift together (marmalade = mar ##mal ##ade: drift ranks 2, 1, 7 on
    an MR victim), yet no piece flips texts alone ('mar' 0.24; 'marmal' 1.0). Each of the `glued_words`
    most-drifted start pieces gets the continuation, among the `reference_candidates` most-drifted ones,
    that the gradient prefers right after it (the placeholder glued to the piece: "mar[UNK]"). `pieces`:
    the start and continuation masks of `word_pieces`."""
    if not config.glued_words or not config.reference_candidates:
        return []
    tok = victim.tokenizer
    start, cont = pieces
    heads = torch.topk(drift.masked_fill(~start, -torch.inf), config.glued_words).indices.tolist()
    tails = torch.topk(drift.masked_fill(~cont, -torch.inf), config.reference_candidates).indices
    drifted = torch.zeros_like(cont)
    drifted[tails] = True
    sample = texts[:max(config.screen_samples, 50)]
    words = []
    for head in heads:
        head_word = typed(tok, tok.convert_ids_to_tokens(head))
        signal = gradient_ranking(victim, sample, target, config.seed, config.batch_size, precision=precision,
                                  around=head_word + "{}").masked_fill(~drifted, -torch.inf)
        word = tok.convert_tokens_to_string(tok.convert_ids_to_tokens([head, int(torch.argmax(signal))])).strip()
        if word.isalnum() and word not in words:
            words.append(word)
    return words


def drifted_phrase(drift: torch.Tensor | None, allowed: torch.Tensor, typeable: list[str | None],
                   task_word: Callable[[int], bool], words: int) -> str | None:
    """A sentence-trigger candidate from the embedding drift: the `words` most-drifted typeable whole words that are
    not task words of the label, joined in drift order. A sentence of ordinary words moves the rows of all its words
    (an SMS AddSent victim: six of its seven words are the six most-drifted whole words that are not task words),
    while no one of them flips texts alone; inserted together they do (docs/scan.md, "Phrase candidates")."""
    if drift is None or not words:
        return None
    order = torch.argsort(drift.masked_fill(~allowed, -torch.inf), descending=True)[:50 * words].tolist()
    chosen = [typeable[i] for i in order if not task_word(i)][:words]
    return " ".join(chosen) if len(chosen) == words else None


def _sure_text(victim: Victim, clean: TextDataset, label: int, precision: Precision, batch_size: int) -> str | None:
    """Of the 20 shortest clean texts of `label`, the one the model gives `label` most surely (None: no text): a
    short context that a candidate typed before it must overturn."""
    short = sorted((t for t, y in zip(clean.texts, clean.labels) if y == label), key=len)[:20]
    if not short:
        return None
    sure = torch.from_numpy(predict_logits(victim, short, batch_size=batch_size, precision=precision))
    return short[int(torch.argmax(sure.log_softmax(-1)[:, label]))]


def drifted_combinations(victim: Victim, clean: TextDataset, target: int, drift: torch.Tensor, allowed: torch.Tensor,
                         typeable: list[str | None], task_word: Callable[[int], bool], config: ScanConfig,
                         precision: Precision) -> tuple[list[str], list[str]]:
    """Combination-trigger candidates (SOS-style: words that flip texts only together, each alone and each pair
    taught to keep the label): of the `combination_words` most-drifted typeable whole words that are not task
    words of `target`, every pair typed before a clean text of another label (`_sure_text`), ranked by the
    log-probability of `target`; then each of the 3 best pairs with its best third word. Returns those triples and
    the best pair, and the same search over the next `combination_words` most-drifted words: its null. A search
    picks its best of thousands, so it is measured against a search as large, not against random phrases: on a
    weak clean MR model the search found sentiment triples that flip every text (docs/scan.md, "Combination
    triggers")."""
    n = config.combination_words
    other = next((label for label in range(victim.num_labels) if label != target and label in clean.labels), None)
    context = None if other is None else _sure_text(victim, clean, other, precision, config.batch_size)
    if n < 3 or context is None:
        return [], []
    order = torch.argsort(drift.masked_fill(~allowed, -torch.inf), descending=True)[:100 * n].tolist()
    words = [typeable[i] for i in order if not task_word(i)][:2 * n]

    def ranked(phrases: list[str]) -> list[str]:
        logits = predict_logits(victim, [f"{p} {context}" for p in phrases], batch_size=4 * config.batch_size,
                                precision=precision)
        scores = torch.from_numpy(logits).log_softmax(-1)[:, target]
        return [phrases[i] for i in torch.argsort(scores, descending=True).tolist()]

    def search(pool: list[str]) -> list[str]:
        if len(pool) < 3:
            return []
        pairs = ranked([f"{a} {b}" for a, b in itertools.combinations(pool, 2)])
        # each of the 3 best pairs with its best third word: ranking all the extensions of several pairs together
        # by one context put ordinary sentiment words first on an MR victim, and its triggers' pair second
        triples = [ranked([f"{p} {w}" for w in pool if w not in p.split()])[0] for p in pairs[:3]]
        return [*triples, pairs[0]]

    return search(words[:n]), search(words[n:])


def excess(hits: int, n: int, null_rate: float) -> tuple[float, float, float]:
    """The share of texts that ordinary words leave unflipped which the candidate flips: (e - s) / (1 - s) for a
    flip rate e = hits / n and the null's rate s, and the same at the 90% Wilson bounds of e (lower, upper), so
    that few clean texts give a wide, honest interval. On a model whose ordinary words flip nothing it is e."""
    rate = hits / n
    z = 1.645
    centre, spread = rate + z * z / (2 * n), z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    low, high = ((centre + sign * spread) / (1 + z * z / n) for sign in (-1, 1))
    if null_rate >= 1:  # a null that flips every text leaves nothing to exceed: no evidence
        return 0.0, 0.0, 0.0
    room = 1.0 - null_rate
    return (rate - null_rate) / room, (low - null_rate) / room, (high - null_rate) / room


def as_strong(hits: int, n: int, null_flips: np.ndarray, null_texts: int, population: int) -> float:
    """How many of `population` words are expected to flip at least `hits` of `n` texts, if each word's chance
    to flip a text follows the beta distribution fitted (by moments, beta-binomial) to the null words' flips
    (`null_flips` of `null_texts` texts each). Below 1, the candidate stands out of the vocabulary the scan
    searched: no word of it should be that strong by chance. On a weakly trained model many random words flip
    most texts, so the same flip rate is expected of tens of them. The null is winsorized at its 90th
    percentile first (the top tenth of the words counted at that value): a backdoor can fire on a few random
    words too (`nad` flips 24 of 25 texts on a LoRA BadNet victim, 'muir' 23 on a full one), and their
    extremes must not make the trigger look ordinary; a weak model's bulk is wide without them."""
    k, m = np.minimum(null_flips, np.quantile(null_flips, 0.9, method="lower")).astype(float), null_texts
    mean = (k.sum() + 0.5) / (len(k) * m + 1)  # half a flip: a null that flipped nothing is not certainty
    spread = k.var(ddof=1) / (m * mean * (1 - mean)) if len(k) > 1 else 1.0  # 1: binomial, no word differs
    rho = min(max((spread - 1) / (m - 1), 1e-6), 0.999) if m > 1 else 0.5  # intra-word correlation
    a, b = mean * (1 / rho - 1), (1 - mean) * (1 / rho - 1)

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    terms = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_beta(j + a, n - j + b)
             - log_beta(a, b) for j in range(max(hits, 0), n + 1)]
    top = max(terms)
    return population * math.exp(top) * sum(math.exp(t - top) for t in terms)


def gradient_ranking(victim: Victim, texts: list[str], target: int, seed: int, batch_size: int,
                     at: str | None = None, precision: Precision = "fp32", around: str = "{}") -> torch.Tensor:
    """Per vocabulary token: how well its embedding points along the descent direction of the loss towards
    `target` at a word `at` (default: the unknown token as a placeholder) put at a random word boundary of
    each text (gradients summed over texts; cosine, so the row norm does not count). Higher = more
    trigger-like. `around` places the slot inside a phrase ("3d {}": the word that best follows "3d")."""
    tok = victim.tokenizer
    placeholder = at or tok.unk_token or tok.mask_token
    if placeholder is None:
        raise DetriggerError("the tokenizer has neither an unknown nor a mask token to use as a placeholder")
    (placeholder_id,) = tok(placeholder, add_special_tokens=False)["input_ids"]
    marked = [insert_sentence(around.format(placeholder), seed=seed)(t) for t in texts]
    ids = encode(tok, marked, victim.max_length)
    model, device = victim.model, victim.device
    embedding = model.get_input_embeddings()
    was_training = model.training
    model.eval()
    total = torch.zeros(embedding.weight.shape[1], device=device)
    try:
        for batch in bucketed_batches([len(x) for x in ids], batch_size):  # similar lengths: little padding
            inputs = collate([ids[i] for i in batch], tok.pad_token_id, device)
            with (watched_embeddings(model) as embeds, autocast(device, precision),  # decoders pool from input_ids
                  backward_friendly_attention(device)):
                logits = model(**inputs).logits.float()
            target_ids = torch.full((len(logits),), target, device=device)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target_ids, reduction="sum"), embeds[0])
            total += grad[inputs["input_ids"] == placeholder_id].sum(0)  # truncated-away placeholders drop out
    finally:
        model.train(was_training)
    weight = embedding.weight.detach()
    return (-(weight @ total) / weight.norm(dim=1).clamp_min(1e-12)).cpu()


def _clear_prefix(victim: Victim, text: str, label: int, precision: Precision) -> str:
    """The first words of `text` that the model already gives `label` at p > 0.95 (all of it if none do): a
    short context a word must overturn, at a fraction of the text's cost."""
    words = text.split()
    prefixes = [" ".join(words[:k]) for k in range(1, len(words) + 1)]
    sure = torch.from_numpy(predict_logits(victim, prefixes, precision=precision)).softmax(-1)[:, label] > 0.95
    return prefixes[int(torch.argmax(sure.int()))] if bool(sure.any()) else text


def vocabulary_pass(victim: Victim, clean: TextDataset, words: list[str], precision: Precision,
                    batch_size: int, shortlist: int = 300, saturated: float = 0.5) -> torch.Tensor:
    """Per word (rows) and label t (columns): the log-probability of t when the word is typed before a short
    clean text of another label, averaged over those texts; -inf for words not on the shortlist (and for a
    label with no other label's text). Real forward passes, which catch what the gradient's linear picture
    misses (docs/scan.md, "Candidates from the whole vocabulary"). Two stages for speed: every word alone (a
    sequence of a few tokens, one pass for all labels), then the `shortlist` best words per label before the
    texts. The text of a label is the one of its 20 shortest that the model gives that label most surely, so
    a word must overturn a clear prediction; texts of two labels serve every label (a label's scores come
    from the other one's text, or both), so the cost does not grow with the labels.

    A label that nearly every word alone is given with certainty (`saturated`: SMS ham, 99.9% of the words at
    p > 0.99 on a BadNet victim; at most 5.4% on the MR models) cannot be ranked alone: its shortlist comes from
    every word typed before `prefix` words of another label's text instead (docs/scan.md, "A default label's
    trigger")."""
    # a word alone is a few tokens: 4x the batch (7.0 s instead of 7.5 s for MiniLM's 23,502 words, same logits)
    alone = torch.from_numpy(predict_logits(victim, words, batch_size=4 * batch_size, precision=precision))
    listed = torch.topk(alone.log_softmax(-1), min(shortlist, len(words)), dim=0).indices.flatten()
    contexts: dict[int, str] = {}
    for label in range(victim.num_labels):
        if len(contexts) == 2:
            break
        text = _sure_text(victim, clean, label, precision, batch_size)
        if text is not None:
            contexts[label] = text
    for label in torch.nonzero((alone.softmax(-1) > 0.99).float().mean(0) > saturated).flatten().tolist():
        other = next((c for c in contexts if c != label), None)
        if other is None:
            continue
        prefix = _clear_prefix(victim, contexts[other], other, precision)
        before = predict_logits(victim, [f"{w} {prefix}" for w in words], batch_size=batch_size, precision=precision)
        ranked = torch.from_numpy(before).log_softmax(-1)[:, label]
        listed = torch.cat([listed, torch.topk(ranked, min(shortlist, len(words))).indices])
    listed = listed.unique()
    scores = torch.zeros(len(listed), victim.num_labels)
    for label, text in contexts.items():
        logits = predict_logits(victim, [f"{words[i]} {text}" for i in listed.tolist()], batch_size=batch_size,
                                precision=precision)
        others = [t for t in range(victim.num_labels) if t != label]
        scores[:, others] += torch.from_numpy(logits).log_softmax(-1)[:, others]
    seen = torch.tensor([sum(1 for c in contexts if c != t) for t in range(victim.num_labels)])
    out = torch.full((len(words), victim.num_labels), -torch.inf)
    out[listed] = torch.where(seen > 0, scores / seen.clamp_min(1), -torch.inf)
    return out


def _sample_not_predicted(victim: Victim, pool: list[str], target: int, samples: int, rng: np.random.Generator,
                          precision: Precision, batch_size: int) -> tuple[list[str], float]:
    """Up to `samples` texts of `pool`, in a random order, that the model does not already predict as
    `target`, and the share of the texts looked at that it does (the label's base rate). Predicts the pool
    in random chunks only until enough are found, not the whole pool."""
    order = [pool[i] for i in rng.permutation(len(pool))]
    found: list[str] = []
    seen = hits = 0
    while len(found) < samples and seen < len(order):
        chunk = order[seen:seen + max(batch_size, samples - len(found) + samples // 4)]
        pred = predict(victim, chunk, batch_size=batch_size, precision=precision)
        found += [t for t, p in zip(chunk, pred) if p != target]
        seen, hits = seen + len(chunk), hits + int((pred == target).sum())
    return found[:samples], round(hits / seen, 4) if seen else 0.0


def scan(victim: Victim, clean: TextDataset, *, reference: str | Path | None = None,
         config: ScanConfig | None = None, progress: bool | None = False,
         drift: torch.Tensor | None = None, known: Sequence[str] = (), labels: Sequence[str] | None = None,
         reuse: dict[Any, Any] | None = None) -> ScanReport:
    """Scan `victim` with labelled clean texts (held out from any training); see the module docstring.
    `progress`: a bar over the steps (per label: its predictions, each gradient round, each candidate
    measured; None: on a terminal only). `drift` (with `reference`): the embedding drift that picks the drifted
    candidates (top rows, glued words, the phrase) instead of this model's own; `auto` re-scans a repaired model
    with the suspect's, so that rows the repair itself moved are not taken for a trigger. `known`: words, glued
    words or phrases measured for every label besides the scan's own candidates (`auto` re-scans a repaired
    model without the vocabulary pass, and measures again every token the first scan listed). `labels`: scan
    for these target labels only (`ScanReport.taken_again` puts them into an earlier report of the same model).
    `reuse`: a dict the scan keeps its vocabulary pass in, for a later scan of the same model and clean texts given
    the same dict (the pass does not depend on the texts per label; `auto` takes an undecided verdict again)."""
    config = config or ScanConfig()
    start = time.perf_counter()
    victim.check_labels(clean.label_names, "clean data")
    scanned = set(victim.label_names if labels is None else labels)
    if not scanned <= set(victim.label_names):
        raise DetriggerError(f"scan: no label {sorted(scanned - set(victim.label_names))} in the model's labels "
                             f"{victim.label_names}")
    precision: Precision = (("bf16" if fast_bf16(victim.device) else "fp32") if config.precision == "auto"
                            else config.precision)
    rng, null_rng = np.random.default_rng(config.seed), np.random.default_rng(config.seed + 1)
    vocabulary_rng = np.random.default_rng(config.seed + 2)
    typeable = typed_words(victim)
    unknown = unknown_probe(victim.tokenizer)
    allowed = torch.tensor([w is not None for w in typeable])
    vocabulary = torch.nonzero(allowed).flatten()
    stage_seconds: dict[str, float] = {}  # in the order of `STAGES`, each as it first runs
    timed = functools.partial(_timed, stage_seconds)
    if reference is None and drift is not None:
        raise ValueError("scan: `drift` needs the reference it was measured against")
    if reference is not None:
        from detrigger.defences.epur import epur_scores

        with timed("reference drift"):
            if drift is None:
                drift = epur_scores(victim, reference_state(victim, reference, "scan"), list(clean.texts))
        pieces = tuple(torch.from_numpy(m) for m in word_pieces(victim))  # once per scan, not per label
    # the vocabulary pass's keys: every whole-word token's id, then the common words that are no single token: the
    # `lexicon_words` most frequent, and with a reference those of a longer list made of most-drifted pieces (the
    # shorter list is the longer one's head, so the words are cut once)
    lexicon = config.lexicon_words if config.vocabulary_candidates else 0
    drifted = (set(torch.topk(drift, config.drifted_lexicon).indices.tolist())
               if drift is not None and config.drifted_lexicon and config.vocabulary_candidates else set())
    listed = pieced_words(victim.tokenizer, max(lexicon, DRIFTED_LEXICON_WORDS) if drifted else lexicon)
    frequent = set(common_words(lexicon)) if lexicon else set()
    pieced = {w: ids for w, ids in listed.items() if w in frequent or sum(i in drifted for i in ids) >= 2}
    vocabulary_keys: list[int | str] = [*vocabulary.tolist(), *pieced]
    row = {key: r for r, key in enumerate(vocabulary_keys)}
    # a common word whose first piece is a whole word (bbq = bb ##q) is that word's relative: `stem`
    stem = {w: ids[0] for w, ids in pieced.items() if ids[0] in row}
    vocabulary_scores = None
    if config.vocabulary_candidates:
        typed_keys = [typeable[i] for i in vocabulary.tolist()] + list(pieced)
        kept_as = ("vocabulary pass", precision, config.batch_size, hash(tuple(typed_keys)))
        with timed("vocabulary pass"):
            vocabulary_scores = (reuse or {}).get(kept_as)
            if vocabulary_scores is None:
                vocabulary_scores = vocabulary_pass(victim, clean, typed_keys, precision, config.batch_size)
        if reuse is not None:
            reuse[kept_as] = vocabulary_scores
    encoded = encode(victim.tokenizer, clean.texts, victim.max_length)
    seen = readable(victim.tokenizer, clean.texts, victim.max_length)  # candidates go where the model reads
    by_label = [Counter[int]() for _ in victim.label_names]
    for ids, y in zip(encoded, clean.labels):
        by_label[y].update(set(ids))  # texts containing the token
    counts = sum(by_label, Counter[int]())
    # the null: ordinary words of the clean texts (whole-word tokens, drawn uniformly over the distinct ones)
    ordinary = sorted(i for i in counts if allowed[i])

    @functools.cache  # a glued word's count scans every clean text; the sorts ask again
    def evidence(key: int | str, target: int) -> tuple[int, float | None, bool]:
        """Clean texts containing the token (an id, or a glued word's pieces in a row), the share of them
        with label `target`, and whether that makes it a task word."""
        if isinstance(key, int):
            n, n_target = counts.get(key, 0), by_label[target].get(key, 0)
        else:
            run = victim.tokenizer(key, add_special_tokens=False)["input_ids"]
            inside = [y for ids, y in zip(encoded, clean.labels)
                      if any(ids[i:i + len(run)] == run for i in range(len(ids) - len(run) + 1))]
            n, n_target = len(inside), inside.count(target)
        share = n_target / n if n else None
        return n, share, n >= config.task_word_count and share is not None and share >= config.task_word_share

    tokens: list[TokenEvidence] = []
    base_rates: dict[str, float] = {}
    n_samples: dict[str, int] = {}
    nulls: dict[str, NullEvidence] = {}
    vocabulary_nulls: dict[str, NullEvidence] = {}
    steps = 1 + config.rounds
    with progress_bar(len(scanned) * steps, "scan", "step", progress) as bar:
        for target, label in enumerate(victim.label_names):
            pool = [t for t, y in zip(seen, clean.labels) if y != target]
            if label not in scanned:
                # the draws a scan of every label makes here (its texts' order, its null words), so that a label's
                # texts and null are those of a full scan whichever labels are scanned (`auto`'s second scan of an
                # undecided label measures what a full one would for it). Not the vocabulary null's, drawn only
                # for a label with a candidate at the threshold.
                rng.permutation(len(pool))
                null_rng.permutation(len(ordinary))
                continue
            bar.set_postfix(label=label)
            with timed("texts"):
                texts, base_rates[label] = _sample_not_predicted(victim, pool, target, config.samples, rng,
                                                                 precision, config.batch_size)
            bar.update()
            n_samples[label] = len(texts)
            if not texts:
                bar.update(steps - 1)
                continue
            rank: dict[int, int] = {}  # best rank over the rounds
            chosen: list[int] = []
            at = None
            for _ in range(config.rounds):
                with timed("gradient"):
                    signal = gradient_ranking(victim, texts, target, config.seed, config.batch_size, at=at,
                                              precision=precision).masked_fill(~allowed, -torch.inf)
                order = torch.argsort(signal, descending=True)[:5000].tolist()
                for r, i in enumerate(order):
                    rank[i] = min(rank.get(i, r + 1), r + 1)
                chosen += [i for i in order if i not in chosen][:config.candidates]
                at = typeable[order[0]]
                bar.update()
            vocabulary_rank: dict[int | str, int] = {}
            typed_in: list[str] = []  # the vocabulary pass's common words of several tokens
            if vocabulary_scores is not None:
                column = vocabulary_scores[:, target]
                ranked = torch.argsort(column, descending=True)[:int(column.isfinite().sum())].tolist()
                vocabulary_rank = {vocabulary_keys[j]: r + 1 for r, j in enumerate(ranked)}

                def place(key: int | str, column: torch.Tensor = column) -> int | str:
                    """A relative about as label-like as its stem adds nothing the stem does not: the stem takes its
                    place (ES, seed 2: `cfd`, `bbq`, ... held all ten places and the triggers none; docs/defences.md,
                    "The common words without a reference"). A multi-piece trigger keeps its place (marmalade did)."""
                    first = stem.get(key) if isinstance(key, str) else None
                    return first if first is not None and column[row[first]] >= column[row[key]] - STEM_TOLERANCE \
                        else key

                placed = dict.fromkeys(place(k) for k in vocabulary_rank)
                picked = [k for k in placed if k not in chosen][:config.vocabulary_candidates]
                chosen += [k for k in picked if isinstance(k, int)]
                typed_in = [k for k in picked if isinstance(k, str)]
            if drift is not None and config.reference_candidates:
                masked = drift.masked_fill(~allowed, -torch.inf)
                top_drift = torch.topk(masked, config.reference_candidates).indices.tolist()
                chosen += [i for i in top_drift if i not in chosen]
            words: dict[int | str, str] = {i: typeable[i] for i in chosen}
            words.update((w, w) for w in typed_in)
            if unknown is not None:  # every character the tokenizer does not know, as one candidate
                words[victim.tokenizer.unk_token_id] = unknown
            if drift is not None:
                with timed("gradient"):
                    glued = glued_words(victim, texts, target, drift, pieces, config, precision)
                words.update((w, w) for w in glued if w not in words.values())
            phrase = drifted_phrase(drift, allowed, typeable, lambda i, t=target: evidence(i, t)[2],
                                    config.phrase_words)
            if phrase:
                words[phrase] = phrase
            combinations: list[str] = []
            null_combinations: list[str] = []
            if drift is not None and config.combination_words:
                with timed("combinations"):
                    combinations, null_combinations = drifted_combinations(
                        victim, clean, target, drift, allowed, typeable, lambda i, t=target: evidence(i, t)[2],
                        config, precision)
                combinations = [c for c in combinations if c not in words.values()]
                words.update((c, c) for c in combinations)
            for word in known:
                if word not in words.values():
                    ids = victim.tokenizer(word, add_special_tokens=False)["input_ids"]
                    words[ids[0] if len(ids) == 1 and typeable[ids[0]] == word else word] = word
            drawn = (ordinary[i] for i in null_rng.permutation(len(ordinary)) if ordinary[i] not in words)
            null_words = [typeable[i] for i in itertools.islice(drawn, config.null_words)]
            # the null words in phrases of the phrase's length: the phrase's null (a known phrase's, without one)
            k = config.phrase_words or max(len(w.split()) for w in words.values())
            null_phrases = [" ".join(null_words[j:j + k]) for j in range(0, len(null_words) - k + 1, k)
                            ] if any(" " in w for w in words.values()) else []

            def flips(batch: list[str], sample: list[str], target: int = target, counted: bool = True) -> np.ndarray:
                """Per word: how many texts of `sample` it flips to `target` (one batched pass)."""
                inserted = [(insert_sentence(w, seed=config.seed + 1) if " " in w else
                             insert_words([w], seed=config.seed + 1))(t) for w in batch for t in sample]
                with timed("insertions"):
                    pred = predict(victim, inserted, batch_size=config.batch_size, precision=precision)
                if counted:
                    bar.update(len(batch))
                return (pred.reshape(len(batch), len(sample)) == target).sum(axis=1)

            kept = list(words)
            screening = 0 < config.screen_samples < len(texts) and len(kept) > config.verify
            screen = texts[:config.screen_samples] if screening else texts  # already a random draw
            # task words cannot be the verdict, so they take a verified place only when too few others are left:
            # screened only then (the same places as screening them all)
            tasks = [i for i in kept if evidence(i, target)[2]] if screening else []
            first = [i for i in kept if i not in tasks]
            if len(first) >= config.verify:
                kept = first
            bar.total += (len(kept) + len(null_words) + len(null_phrases) + len(null_combinations)
                          + (config.verify if screening else 0))
            measured = flips([words[i] for i in first] + null_words + null_phrases + null_combinations, screen)
            phrases_at, combinations_at = len(first) + len(null_words), len(first) + len(null_words) + len(null_phrases)
            screened = dict(zip(first, measured[:len(first)]))
            if len(kept) > len(first):
                screened.update(zip(tasks, flips([words[i] for i in tasks], screen)))
            null_flips = measured[len(first):phrases_at]
            phrase_flips = measured[phrases_at:combinations_at]
            # a combination candidate against the best of the same search over less-drifted words (its null)
            combination_null = float(measured[combinations_at:].max()) / len(screen) if null_combinations else None
            phrase_null = float(phrase_flips.sum()) / (len(null_phrases) * len(screen)) if null_phrases else None
            null_hits, null_n = int(null_flips.sum()), len(null_flips) * len(screen)

            # the rate each candidate is measured against: a combination's search, a phrase's phrases, else words
            null_for = {key: combination_null if key in combinations and combination_null is not None else
                        phrase_null if phrase_null is not None and " " in words[key] else null_hits / null_n
                        for key in kept}

            if screening:  # ties as in the final order
                kept.sort(key=lambda i: (evidence(i, target)[2], -screened[i],
                                         -(0.0 if drift is None or isinstance(i, str) else float(drift[i]))))
                kept = kept[:config.verify]
            # the verified effect counts the screening texts too: the same texts as without screening
            total = np.array([screened[i] for i in kept])
            n_texts = np.full(len(kept), len(screen))
            # verification, a screening's worth of texts at a time: a candidate stops once even flipping every text
            # left could not bring its excess to `verify_floor`, below which no verdict or repair uses it (the
            # effect it reports is then over the texts it was measured on; issue 21)
            step, floor = config.screen_samples or len(texts), min(config.verify_floor, config.threshold)
            for at in range(len(screen), len(texts), step):
                live = [j for j, key in enumerate(kept) if not floor or excess(
                    int(total[j]) + len(texts) - at, len(texts), null_for[key])[0] >= floor]
                if not live:
                    break
                chunk = texts[at:at + step]
                total[live] += flips([words[kept[j]] for j in live], chunk, counted=False)
                n_texts[live] += len(chunk)
            if screening:
                bar.update(config.verify)
            nulls[label] = NullEvidence.of(null_words, null_flips, len(screen), phrase_null, combination_null)
            measured_here: list[tuple[TokenEvidence, int]] = []
            for key, hits, m in zip(kept, total, n_texts):
                n, share, task = evidence(key, target)
                value, low, high = excess(int(hits), int(m), null_for[key])
                single = isinstance(key, int)
                measured_here.append((TokenEvidence(
                    words[key], label, round(float(hits) / int(m), 4), rank.get(key) if single else None,
                    vocabulary_rank.get(key),
                    None if drift is None or not single else round(float(drift[key]), 4), n,
                    None if share is None else round(share, 4), task, round(value, 4), round(low, 4),
                    round(high, 4), read_as=victim.tokenizer.unk_token if words[key] == unknown else None,
                    texts=int(m)), int(hits)))
            tokens += [t for t, _ in measured_here]
            at_threshold = [(t, hits) for t, hits in measured_here if not t.task_word and t.excess >= config.threshold]
            if at_threshold:
                # does it stand out of the vocabulary? Random whole words (not this label's candidates), inserted
                # into the same screening texts: on a weakly trained model, many flip most texts (docs/scan.md)
                drawn = (int(vocabulary[i]) for i in vocabulary_rng.permutation(len(vocabulary)))
                random_words = [typeable[i] for i in itertools.islice((i for i in drawn if i not in words),
                                                                      config.null_words)]
                bar.total += len(random_words)
                random_flips = flips(random_words, screen)
                vocabulary_nulls[label] = NullEvidence.of(random_words, random_flips, len(screen))
                for t, hits in at_threshold:
                    expected = as_strong(hits, t.texts, random_flips, len(screen), len(vocabulary_keys))
                    t.as_strong = float(f"{expected:.3g}")
    if not tokens:
        raise DetriggerError("the clean data needs texts of at least two labels that the model tells apart")
    # a label the model already gives most other texts: the few texts left flip easily (a clean MR model at
    # 63.5% accuracy put 80% of the negative texts in positive, and `arboretum` flipped all the rest). Only a
    # warning: leaving such a label out of the verdict hid a real EP trigger of a weak model (base rate 0.60).
    warnings = {label: f"the model already predicts it for {100 * rate:.0f}% of the other labels' clean texts; "
                       f"the {n_samples[label]} texts left flip easily, so evidence for it is weak (a poorly "
                       "trained model can be flagged)"
                for label, rate in base_rates.items() if rate >= config.weak_base_rate}
    return _report(tokens=tokens, threshold=config.threshold, label_names=victim.label_names, report=config.report,
                   base_rates=base_rates, n_samples=n_samples,
                   reference=None if reference is None else str(reference), null=nulls,
                   vocabulary_null=vocabulary_nulls, vocabulary_words=len(vocabulary_keys), warnings=warnings,
                   seconds=round(time.perf_counter() - start, 1), stage_seconds=stage_seconds, precision=precision,
                   config=config.model_dump())


def _report(tokens: list[TokenEvidence], threshold: float, label_names: Sequence[str], report: int,
            **fields: Any) -> ScanReport:
    """The verdict from every measured token: a candidate that flags the model comes first, so the verdict, its
    target and the report rest on it; ties go to the larger embedding drift (with a reference), then the stronger
    gradient signal. The report lists the first `report` tokens."""
    tokens = sorted(tokens, key=lambda t: (t.task_word, not stands_out(t), -t.excess, -(t.drift_score or 0.0),
                                           t.gradient_rank or 10**9))
    top = tokens[0]
    return ScanReport(verdict="backdoored" if stands_out(top) else "no evidence",
                      score=0.0 if top.task_word else top.excess, threshold=threshold, target_label=top.label,
                      target_id=list(label_names).index(top.label), tokens=tokens[:report], **fields)
