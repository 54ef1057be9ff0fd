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
   candidate is screened on `screen_samples` texts, and only the `verify` best are measured on all
   `samples` texts (the reported effects are these full measurements).
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from detrigger.attacks.triggers import insert_words
from detrigger.batching import collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.evaluation.metrics import predict
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
    screen_samples: int = Field(50, ge=0, description="texts each candidate is screened on (0: no screening)")
    verify: int = Field(10, ge=1, description="best screened candidates per label measured on all samples")
    threshold: float = Field(THRESHOLD, gt=0, le=1, description="flag the model when the best effect reaches this")
    task_word_count: int = Field(5, ge=1, description="clean occurrences from which a token can be a task word")
    task_word_share: float = Field(0.8, gt=0, le=1, description="share of them in the label's texts that makes it one")
    report: int = Field(10, ge=1, description="tokens listed in the report")
    seed: int = 0
    batch_size: int = Field(64, ge=1)


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
    base_rates: dict[str, float]  # per label: share of the other labels' clean texts already predicted as it (left out)
    n_samples: dict[str, int]
    reference: str | None
    seconds: float = 0.0
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
                     f"{self.seconds:.0f} s")
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
                     at: str | None = None) -> torch.Tensor:
    """Per vocabulary token: how well its embedding points along the descent direction of the loss towards
    `target` at a word `at` (default: the unknown token as a placeholder) put at a random word boundary of
    each text (gradients summed over texts; cosine, so the row norm does not count). Higher = more
    trigger-like."""
    tok = victim.tokenizer
    placeholder = at or tok.unk_token or tok.mask_token
    if placeholder is None:
        raise DetriggerError("the tokenizer has neither an unknown nor a mask token to use as a placeholder")
    (placeholder_id,) = tok(placeholder, add_special_tokens=False)["input_ids"]
    marked = [insert_words([placeholder], seed=seed)(t) for t in texts]
    ids = encode(tok, marked, victim.max_length)
    model, device = victim.model, victim.device
    embedding = model.get_input_embeddings()
    was_training = model.training
    model.eval()
    total = torch.zeros(embedding.weight.shape[1], device=device)
    try:
        for start in range(0, len(ids), batch_size):
            inputs = collate(ids[start:start + batch_size], tok.pad_token_id, device)
            embeds = embedding(inputs["input_ids"]).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
            target_ids = torch.full((len(logits),), target, device=device)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target_ids, reduction="sum"), embeds)
            total += grad[inputs["input_ids"] == placeholder_id].sum(0)  # truncated-away placeholders drop out
    finally:
        model.train(was_training)
    weight = embedding.weight.detach()
    return (-(weight @ total) / weight.norm(dim=1).clamp_min(1e-12)).cpu()


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
    tokens: list[TokenEvidence] = []
    base_rates: dict[str, float] = {}
    n_samples: dict[str, int] = {}
    with progress_bar(len(victim.label_names) * (1 + config.rounds), "scan", "step", progress) as bar:
        for target, label in enumerate(victim.label_names):
            bar.set_postfix(label=label)
            pool = [t for t, y in zip(clean.texts, clean.labels) if y != target]
            if not pool:
                continue
            already = predict(victim, pool) == target
            bar.update()
            base_rates[label] = round(float(already.mean()), 4)
            pool = [t for t, a in zip(pool, already) if not a]
            texts = [pool[i] for i in rng.permutation(len(pool))[:config.samples]]
            n_samples[label] = len(texts)
            if not texts:
                continue
            rank: dict[int, int] = {}  # best rank over the rounds
            chosen: list[int] = []
            at = None
            for _ in range(config.rounds):
                signal = gradient_ranking(victim, texts, target, config.seed, config.batch_size, at=at)
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
            words = [word_of(victim, i) for i in chosen]
            insert = {w: insert_words([w], seed=config.seed + 1) for w in words}

            def flip_rate(word: str, sample: list[str]) -> float:
                bar.update()
                return float(np.mean(predict(victim, [insert[word](t) for t in sample]) == target))

            def evidence(token_id: int) -> tuple[int, float | None, bool]:
                n = counts.get(token_id, 0)
                share = by_label[target].get(token_id, 0) / n if n else None
                return n, share, n >= config.task_word_count and share is not None and share >= config.task_word_share

            kept = list(zip(chosen, words))
            screening = 0 < config.screen_samples < len(texts) and len(kept) > config.verify
            bar.total += len(kept) + config.verify if screening else len(kept)  # the flip rates measured
            if screening:
                screen = texts[:config.screen_samples]  # already a random draw
                # task words cannot be the verdict, so they do not take the places; ties as in the final order
                drifts = {i: 0.0 if drift is None else float(drift[i]) for i in chosen}
                kept.sort(key=lambda item: (evidence(item[0])[2], -flip_rate(item[1], screen), -drifts[item[0]]))
                kept = kept[:config.verify]
            for token_id, word in kept:
                rate = flip_rate(word, texts)
                n, share, task = evidence(token_id)
                tokens.append(TokenEvidence(word, label, round(rate, 4), rank.get(token_id),
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
                      seconds=round(time.perf_counter() - start, 1), config=config.model_dump())
