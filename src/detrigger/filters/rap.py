"""RAP: Yang, Lin, Li, Zhou, Sun, "RAP: Robustness-Aware Perturbations for Defending against Backdoor Attacks on
NLP Models" (EMNLP 2021).

A backdoored model is far more robust on triggered texts than on clean ones: once the trigger is there, the
target probability hardly moves whatever else is added. RAP adds a rare word (the "RAP trigger") and trains
only its word embedding, on clean texts, so that inserting it lowers the probability of a clean text's label by
a set amount (between 0.1 and 0.3, the paper's range). A triggered text's target probability then drops far
less: suspicion = minus that drop. The threshold is set at a false rejection rate on held-out clean texts.

The model is never changed: the trained vector replaces the RAP word's input embedding through a forward hook,
only at the inserted position and only during RAP's own forward passes, so the word in ordinary text and every
other prediction stay the victim's.

Departures from the paper:
- the paper protects one label known to the defender (e.g. "positive") and checks only texts predicted as it;
  the defender here does not know the target, so by default every label is protected: the embedding is trained
  on correctly classified clean texts of every label (each on its own label's probability) and each test text
  is checked on its predicted label. `protect` restores the paper's form.
- the RAP word is `dq`, not the paper's `cf`, which is one of detrigger's BadNet trigger words (a defender would
  pick a word unrelated to the attack; `dq` is one WordPiece token that never occurs in MR).
- the paper trains with SGD at lr 1e-2; our loss is a batch mean, so the row's gradient is small, and the
  default lr is 1.0 (as EP needs here: docs/attacks.md); the row is renormalised to its original L2 norm after
  every step (as the RAP code does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from detrigger.batching import bucketed_batches, collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError
from detrigger.filters.base import FilterConfig, InputFilter, register
from detrigger.models.predict import predict_logits
from detrigger.progress import progress_bar


class RapConfig(FilterConfig):
    word: str = Field("dq", min_length=1, description="the RAP trigger word inserted at the start of every text")
    protect: str | None = Field(None, description="the protected label's name (the paper's form: only texts "
                                "predicted as it are checked); default: every label")
    drop_low: float = Field(0.1, ge=0, le=1, description="least drop of a clean text's label probability trained for")
    drop_high: float = Field(0.3, ge=0, le=1, description="largest drop trained for (the paper's range: 0.1-0.3)")
    epochs: int = Field(5, ge=1, description="passes over the clean fitting texts (the paper: 5)")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam (default: a saturated model's gradients are "
                                              "tiny, Adam's steps are not) or sgd (the paper)")
    lr: float = Field(0.05, gt=0, description="step size on the RAP word's embedding (the paper: SGD at 1e-2)")
    train_batch_size: int = Field(32, ge=1, description="texts per training step (the paper: 32)")
    renorm: bool = Field(True, description="keep the RAP word's embedding at its original L2 norm (the RAP code)")


@register("rap", "RAP: a trained rare word lowers clean texts' label probability; a triggered text barely moves")
class RapFilter(InputFilter):
    config_class = RapConfig
    config: RapConfig

    # ------------------------------------------------------------------------------------------ inputs

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text with the RAP word inserted after the leading special token (or at the start),
        the text truncated so that the whole fits the model's length."""
        short = encode(self.victim.tokenizer, self.victim.prepare(texts), self.victim.max_length - len(self.word_ids))
        return [x[:self.at] + self.word_ids + x[self.at:] for x in short]

    @contextlib.contextmanager
    def _substituted(self, vectors: torch.Tensor, width_mask: list[torch.Tensor]) -> Iterator[None]:
        """While open, the input embeddings at the RAP positions of the current batch (`width_mask[0]`, a bool
        tensor set by the caller before each forward) are replaced by `vectors` (k rows)."""
        def hook(module, inputs, output):
            mask = width_mask[0]
            if mask is None:
                return output
            out = output.clone()
            out[mask] = vectors.to(out.dtype).repeat(int(mask.sum()) // len(vectors), 1)
            return out

        handle = self.victim.model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _rap_probs(self, ids: list[list[int]], labels: np.ndarray, vectors: torch.Tensor, grad: bool = False,
                   bar=None) -> torch.Tensor:
        """Probability of `labels[i]` for every RAP-inserted text, batched; with `grad`, one tensor that keeps
        the graph to `vectors` (callers then pass one batch)."""
        model, device, k = self.victim.model, self.victim.device, len(self.word_ids)
        mask_box: list[torch.Tensor | None] = [None]
        out = torch.zeros(len(ids), device=device)
        batches = [np.arange(len(ids))] if grad else bucketed_batches([len(x) for x in ids], self.config.batch_size)
        with self._substituted(vectors, mask_box), torch.set_grad_enabled(grad):
            for batch in batches:
                inputs = collate([ids[i] for i in batch], self.victim.tokenizer.pad_token_id, device)
                mask = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
                mask[:, self.at:self.at + k] = True
                mask_box[0] = mask
                logits = model(**inputs).logits.float()
                target = torch.as_tensor(labels[batch], device=device)
                p = logits.softmax(-1).gather(1, target[:, None])[:, 0]
                if grad:
                    return p
                out[torch.as_tensor(batch, device=device)] = p
                if bar is not None:
                    bar.update(len(batch))
        return out

    # ------------------------------------------------------------------------------------------ fitting

    def _fit(self, clean: TextDataset, corpus: Sequence[str], progress: bool | None) -> None:
        cfg, victim = self.config, self.victim
        if cfg.drop_low > cfg.drop_high:
            raise DetriggerError(f"rap: drop_low {cfg.drop_low} is above drop_high {cfg.drop_high}")
        self.protect_id = None
        if cfg.protect is not None:
            if cfg.protect not in victim.label_names:
                raise DetriggerError(f"rap: protect {cfg.protect!r} is not a label of the model "
                                     f"[{', '.join(victim.label_names)}]")
            self.protect_id = victim.label_names.index(cfg.protect)
        tok = victim.tokenizer
        self.word_ids = tok(cfg.word, add_special_tokens=False)["input_ids"]
        if not self.word_ids:
            raise DetriggerError(f"rap: the word {cfg.word!r} has no tokens for this tokenizer")
        probe = tok("a", add_special_tokens=True)["input_ids"]
        self.at = 1 if probe and probe[0] in tok.all_special_ids else 0  # after [CLS] / <s>, as the paper
        weight = victim.model.get_input_embeddings().weight
        start = weight.detach()[self.word_ids].clone().float()
        norms = start.norm(dim=1, keepdim=True)
        vectors = start.clone().requires_grad_(True)

        logits = predict_logits(victim, clean.texts, batch_size=cfg.batch_size)
        pred = logits.argmax(1)
        keep = pred == np.asarray(clean.labels)  # correctly classified clean texts, each on its own label
        if self.protect_id is not None:
            keep &= pred == self.protect_id
        texts = [t for t, k in zip(clean.texts, keep) if k]
        if not texts:
            raise DetriggerError("rap: no correctly classified clean texts (of the protected label) to train on")
        labels = pred[keep]
        base = torch.as_tensor(_softmax(logits[keep])[np.arange(len(texts)), labels], device=victim.device)
        with_rap = self._ids(texts)

        model = victim.model
        was_training = model.training
        requires = [p.requires_grad for p in model.parameters()]
        model.eval()
        model.requires_grad_(False)
        rng = np.random.default_rng(cfg.seed)
        losses = []
        adam = torch.optim.Adam([vectors], lr=cfg.lr) if cfg.optimizer == "adam" else None
        try:
            steps = cfg.epochs * -(-len(texts) // cfg.train_batch_size)
            with progress_bar(steps, "rap fit", "step", progress) as bar:
                for _ in range(cfg.epochs):
                    for batch in bucketed_batches([len(x) for x in with_rap], cfg.train_batch_size, rng=rng):
                        p = self._rap_probs([with_rap[i] for i in batch], labels[batch], vectors, grad=True)
                        drop = base[torch.as_tensor(batch, device=victim.device)] - p
                        # hinge on both sides of the range: drop below drop_low or above drop_high is penalised
                        loss = (torch.relu(cfg.drop_low - drop) + torch.relu(drop - cfg.drop_high)).mean()
                        vectors.grad = None
                        loss.backward()
                        with torch.no_grad():
                            if adam is not None:
                                adam.step()
                            else:
                                vectors -= cfg.lr * vectors.grad
                            if cfg.renorm:
                                vectors *= norms / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
                        losses.append(float(loss.detach()))
                        bar.update(1)
        finally:
            model.train(was_training)
            for p, r in zip(model.parameters(), requires):
                p.requires_grad_(r)
        self.vectors = vectors.detach()
        drops = self._drops(texts, None)
        self.details.update(word=cfg.word, word_tokens=tok.convert_ids_to_tokens(self.word_ids), trained_on=len(texts),
                            first_loss=round(float(np.mean(losses[:max(1, len(losses) // cfg.epochs)])), 4),
                            final_loss=round(float(np.mean(losses[-max(1, len(losses) // cfg.epochs):])), 4),
                            fit_drop_mean=round(float(np.mean(drops)), 4),
                            fit_in_range=round(float(np.mean((drops >= cfg.drop_low) & (drops <= cfg.drop_high))), 4))

    # ------------------------------------------------------------------------------------------ scoring

    def _drops(self, texts: Sequence[str], bar) -> np.ndarray:
        """Per text: its predicted label's probability minus that label's probability with the RAP word."""
        if not texts:
            return np.zeros(0)
        logits = predict_logits(self.victim, texts, batch_size=self.config.batch_size, bar=bar)
        pred = logits.argmax(1)
        base = _softmax(logits)[np.arange(len(texts)), pred]
        with_rap = self._ids(texts)
        self._last_pred = pred
        p = self._rap_probs(with_rap, pred, self.vectors, bar=bar).cpu().numpy()
        return base - p

    def score(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        with progress_bar(2 * len(texts), "rap", "text", progress) as bar:
            drops = self._drops(texts, bar)
        scores = -drops
        if self.protect_id is not None and len(texts):  # the paper's form: other labels always pass
            scores = np.where(self._last_pred == self.protect_id, scores, -np.inf)
        return scores


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
