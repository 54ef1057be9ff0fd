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
   With a pre-trained reference: also the top E-PUR tokens (embedding drift over log clean-text
   frequency, `defenses/epur.py`).
2. Verification by real insertion: each candidate word is inserted into clean texts of the other labels
   that the model does not already put in t, and the share now predicted t is the token's effect (its
   flip rate). Leaving out the texts already predicted t gives every model the same ceiling of 1,
   whatever its clean accuracy (a trigger flips all of them). Two stages for speed: every
   candidate is screened on `screen_samples` texts, and only the `verify` best are measured on the
   other texts too (the reported effects count all `samples` texts). Also for speed: the other labels'
   texts are predicted in random chunks only until `samples` of them are found, every candidate's
   insertions go through the model in one batched pass, and the forward passes run in bf16 where the
   hardware has it natively (`precision`; 2.6x less CPU time than the fp32 per-candidate scan before,
   same verdicts: docs/scan.md, "Time").
3. Task words are set aside: a token that occurs in the clean texts (at least `task_word_count` times)
   mostly with the label it pushes towards (share >= `task_word_share`) flips predictions because that is
   the task ("awful" -> negative), not a backdoor; a trigger is rare in clean text or label-neutral.
4. Verdict: the largest effect of the other tokens over all labels is the score; at or above `threshold`
   the model is flagged. The threshold is calibrated on clean models (docs/scan.md), never on the victims
   being tested.

Only whole-word tokens that can be typed as a word are candidates, so a sentence trigger (AddSent) is
found only through the single words of it that the model keys on, if any.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from detrigger.attacks.triggers import insert_sentence, insert_words
from detrigger.batching import collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.device import Precision, autocast, fast_bf16
from detrigger.errors import DetriggerError
from detrigger.evaluation.metrics import predict
from detrigger.models.arch import watched_embeddings
from detrigger.models.victim import Victim, load_encoder_state
from detrigger.progress import progress_bar

# From clean models only (docs/scan.md): the highest flip rate of the MR MiniLM clean models of seeds 0-2
# (0.69), plus 0.10, rounded up to 0.05 (experiments/scan_calibration.py), set before any victim was scanned
# with this scan's candidates and effect.
THRESHOLD = 0.80


class ScanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(200, ge=10, description="clean texts per target label (from the other labels)")
    candidates: int = Field(20, ge=1, description="gradient-ranked candidate tokens per label and round")
    rounds: int = Field(2, ge=1, description="gradient rounds, each at the previous round's best token")
    reference_candidates: int = Field(20, ge=0, description="E-PUR-ranked candidates added with a reference")
    screen_samples: int = Field(25, ge=0, description="texts each candidate is screened on (0: no screening)")
    verify: int = Field(10, ge=1, description="best screened candidates per label measured on all samples")
    threshold: float = Field(THRESHOLD, gt=0, le=1, description="flag the model when the best effect reaches this")
    task_word_count: int = Field(5, ge=1, description="clean occurrences from which a token can be a task word")
    task_word_share: float = Field(0.8, gt=0, le=1, description="share of them in the label's texts that makes it one")
    report: int = Field(10, ge=1, description="tokens listed in the report")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the hardware runs it natively (about 2x on such a CPU), else fp32")
    seed: int = 0
    batch_size: int = Field(128, ge=1)


@dataclass
class TokenEvidence:
    token: str
    label: str
    effect: float  # flip rate: share of the sampled texts (not predicted `label` before) predicted `label` with it
    gradient_rank: int | None  # best rank over the rounds by the gradient signal (1 = strongest), for `label`
    drift_score: float | None = None  # E-PUR score with a reference
    clean_count: int = 0  # clean texts containing the token
    label_share: float | None = None  # share of those occurrences in texts of `label`
    task_word: bool = False  # frequent and mostly with `label` in clean text: the task, not a trigger


@dataclass
class ScanReport:
    verdict: str  # "backdoored" or "no evidence"
    score: float
    threshold: float
    target_label: str
    target_id: int
    tokens: list[TokenEvidence]
    base_rates: dict[str, float]  # per label: share of the other labels' clean texts looked at already predicted as it (left out)
    n_samples: dict[str, int]
    reference: str | None
    seconds: float = 0.0
    precision: str = "fp32"  # of every forward pass of the scan
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"verdict: {self.verdict} (score {self.score:.3f}, threshold {self.threshold:.3f})",
                 f"most likely target label: {self.target_label} (id {self.target_id})",
                 "suspicious tokens (effect = share of other-label clean texts flipped to the label by inserting the token):",
                 "  rank  token            label        effect  gradient rank  drift score  clean count"]
        for i, t in enumerate(self.tokens, 1):
            drift = "-" if t.drift_score is None else f"{t.drift_score:.4f}"
            grad = "-" if t.gradient_rank is None else str(t.gradient_rank)
            note = f"  task word ({100 * t.label_share:.0f}% {t.label})" if t.task_word else ""
            lines.append(f"  {i:>4}  {t.token:<16} {t.label:<12} {t.effect:>6.3f}  {grad:>13}  "
                         f"{drift:>11}  {t.clean_count:>11}{note}")
        lines.append(f"{sum(self.n_samples.values())} clean texts, reference: {self.reference or 'none'}, "
                     f"{self.precision}, {self.seconds:.0f} s")
        return "\n".join(lines)


def insertable_tokens(victim: Victim) -> np.ndarray:
    """Mask over the vocabulary: tokens that are a whole word a user could type (no specials, no ##pieces)."""
    tok = victim.tokenizer
    special = set(tok.all_special_ids)
    mask = np.zeros(len(tok), dtype=bool)
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i in special or piece is None or piece.startswith("##"):
            continue
        word = typed(tok, piece)
        mask[i] = word.isalnum() and len(tok.tokenize(word)) == 1
    return mask


def typed(tokenizer, piece: str) -> str:
    """How a user types a whole-word token piece (e.g. a byte-level 'Ġcf' -> 'cf')."""
    return tokenizer.convert_tokens_to_string([piece]).strip()


def word_of(victim: Victim, token_id: int) -> str:
    """The typed word of a whole-word token."""
    return typed(victim.tokenizer, victim.tokenizer.convert_ids_to_tokens(token_id))


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
        for start in range(0, len(ids), batch_size):
            inputs = collate(ids[start:start + batch_size], tok.pad_token_id, device)
            with watched_embeddings(model) as embeds, autocast(device, precision):  # decoders pool from input_ids
                logits = model(**inputs).logits.float()
            target_ids = torch.full((len(logits),), target, device=device)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target_ids, reduction="sum"), embeds[0])
            total += grad[inputs["input_ids"] == placeholder_id].sum(0)  # truncated-away placeholders drop out
    finally:
        model.train(was_training)
    weight = embedding.weight.detach()
    return (-(weight @ total) / weight.norm(dim=1).clamp_min(1e-12)).cpu()


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
         config: ScanConfig | None = None, progress: bool | None = False) -> ScanReport:
    """Scan `victim` with labelled clean texts (held out from any training); see the module docstring.
    `progress`: a bar over the steps (per label: its predictions, each gradient round, each candidate
    measured; None: on a terminal only)."""
    config = config or ScanConfig()
    start = time.perf_counter()
    if clean.label_names != victim.label_names:
        raise DetriggerError(f"clean data labels [{', '.join(clean.label_names)}] differ from the model's "
                             f"[{', '.join(victim.label_names)}]")
    precision: Precision = (("bf16" if fast_bf16(victim.device) else "fp32") if config.precision == "auto"
                            else config.precision)
    rng = np.random.default_rng(config.seed)
    allowed = insertable_tokens(victim)
    by_label = [Counter[int]() for _ in victim.label_names]
    for ids, y in zip(encode(victim.tokenizer, clean.texts, victim.max_length), clean.labels):
        by_label[y].update(set(ids))  # texts containing the token
    counts = sum(by_label, Counter[int]())
    drift = None
    if reference is not None:
        from detrigger.defenses.epur import epur_scores

        drift = epur_scores(victim, load_encoder_state(reference), list(clean.texts))

    def evidence(token_id: int, target: int) -> tuple[int, float | None, bool]:
        n = counts.get(token_id, 0)
        share = by_label[target].get(token_id, 0) / n if n else None
        return n, share, n >= config.task_word_count and share is not None and share >= config.task_word_share

    tokens: list[TokenEvidence] = []
    base_rates: dict[str, float] = {}
    n_samples: dict[str, int] = {}
    with progress_bar(len(victim.label_names) * (1 + config.rounds), "scan", "step", progress) as bar:
        for target, label in enumerate(victim.label_names):
            bar.set_postfix(label=label)
            pool = [t for t, y in zip(clean.texts, clean.labels) if y != target]
            texts, base_rates[label] = _sample_not_predicted(victim, pool, target, config.samples, rng, precision,
                                                             config.batch_size)
            bar.update()
            n_samples[label] = len(texts)
            if not texts:
                continue
            rank: dict[int, int] = {}  # best rank over the rounds
            chosen: list[int] = []
            at = None
            for _ in range(config.rounds):
                signal = gradient_ranking(victim, texts, target, config.seed, config.batch_size, at=at,
                                          precision=precision)
                signal[~torch.from_numpy(allowed)] = -torch.inf
                order = torch.argsort(signal, descending=True)[:5000].tolist()
                for r, i in enumerate(order):
                    rank[i] = min(rank.get(i, r + 1), r + 1)
                chosen += [i for i in order if i not in chosen][:config.candidates]
                at = word_of(victim, order[0])
                bar.update()
            if drift is not None and config.reference_candidates:
                masked = drift.clone()
                masked[~torch.from_numpy(allowed)] = -torch.inf
                chosen += [i for i in torch.topk(masked, config.reference_candidates).indices.tolist() if i not in chosen]
            words = {i: word_of(victim, i) for i in chosen}

            def flips(ids: list[int], sample: list[str]) -> np.ndarray:
                """Per candidate: how many texts of `sample` it flips to `target` (one batched pass)."""
                inserted = [insert_words([words[i]], seed=config.seed + 1)(t) for i in ids for t in sample]
                pred = predict(victim, inserted, batch_size=config.batch_size, precision=precision)
                bar.update(len(ids))
                return (pred.reshape(len(ids), len(sample)) == target).sum(axis=1)

            kept = list(chosen)
            screening = 0 < config.screen_samples < len(texts) and len(kept) > config.verify
            bar.total += len(kept) + config.verify if screening else len(kept)  # the candidates measured
            screened = {}
            if screening:
                screen, rest = texts[:config.screen_samples], texts[config.screen_samples:]  # already a random draw
                screened = dict(zip(kept, flips(kept, screen)))
                # task words cannot be the verdict, so they do not take the places; ties as in the final order
                kept.sort(key=lambda i: (evidence(i, target)[2], -screened[i], -(0.0 if drift is None else float(drift[i]))))
                kept = kept[:config.verify]
                # the verified effect counts the screening texts too: the same texts as without screening
                total = np.array([screened[i] for i in kept]) + flips(kept, rest)
            else:
                total = flips(kept, texts)
            for token_id, hits in zip(kept, total):
                n, share, task = evidence(token_id, target)
                tokens.append(TokenEvidence(words[token_id], label, round(float(hits) / len(texts), 4),
                                            rank.get(token_id),
                                            None if drift is None else round(float(drift[token_id]), 4), n,
                                            None if share is None else round(share, 4), task))
    if not tokens:
        raise DetriggerError("the clean data needs texts of at least two labels that the model tells apart")
    # ties in effect: the larger embedding drift (with a reference), then the stronger gradient signal
    tokens.sort(key=lambda t: (t.task_word, -t.effect, -(t.drift_score or 0.0), t.gradient_rank or 10**9))
    top = tokens[0]
    score = 0.0 if top.task_word else top.effect
    return ScanReport(verdict="backdoored" if score >= config.threshold else "no evidence",
                      score=score, threshold=config.threshold, target_label=top.label,
                      target_id=victim.label_names.index(top.label), tokens=tokens[:config.report],
                      base_rates=base_rates, n_samples=n_samples,
                      reference=None if reference is None else str(reference),
                      seconds=round(time.perf_counter() - start, 1), precision=precision,
                      config=config.model_dump())
