"""Mixing and Fine-mixing (Zhang et al., Findings of EMNLP 2022).

With backdoored weights w_B and pre-trained weights w_P, keep a fraction rho of the elements of
(w_B - w_P) and reset the rest to w_P: w = where(m, w_B, w_P), exactly (not w_P + m * (w_B - w_P), which
rounds). The mask m is random (Fine-mixing) or chosen by |w_B - w_P| ("Sel": keep the largest changes
with `top`, the smallest with `bottom`). Every tensor of the suspect's base model (the family's
`base_model_prefix`: `bert.*`, `roberta.*`, GPT-2's `transformer.*`, Llama's `model.*`) present in the
reference (loaded with AutoModel, so the keys match) is mixed, embeddings included, with exactly
round(rho * numel) kept elements per tensor; the reference must be the suspect's family and vocabulary
(`reference_state`). The task head (every module outside the base model, DeBERTa's pooler included) has no
pre-trained counterpart and is kept or re-initialised. Fine-mixing then fine-tunes on the clean subset; Mixing alone
is the ablation without fine-tuning.

rho is the accuracy / backdoor knob, and a defender cannot measure ASR: with `rho` unset, every value on
`rho_grid` is tried and the smallest whose held-out clean accuracy (after fine-tuning, for Fine-mixing) is
within `tolerance` of the best grid point's is kept; the curve is reported. Departure: the paper's
reference point is the suspect model, but the suspect has usually seen the defender's clean texts in
training (here they are a subset of its training split), so its held-out accuracy is inflated (MR BadNet:
87.6% on the held-out part vs 81.9% on the test set) and no small rho ever came within 2 points of it.
The best mixed model is a fair reference: every grid point was fine-tuned on the same texts.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
from pydantic import Field

from detrigger.defences.base import Context, DefenceConfig, StepDetails, register
from detrigger.defences.finetune import fine_tune
from detrigger.models.predict import accuracy_on
from detrigger.models.victim import Victim, reference_state

log = logging.getLogger(__name__)

MaskMode = Literal["random", "top", "bottom"]


class MixingConfig(DefenceConfig):
    rho: float | None = Field(None, ge=0, le=1, description="kept fraction of (w_B - w_P); None: choose on the grid")
    rho_grid: tuple[float, ...] = Field((0.1, 0.2, 0.3, 0.5, 0.7), description="candidates, tried smallest first")
    tolerance: float = Field(0.02, ge=0, description="allowed drop of held-out clean accuracy vs the best grid point")
    mask: MaskMode = Field("random", description="random (Fine-mixing), or Sel: keep the top / bottom |w_B - w_P|")
    head: Literal["keep", "reinit"] = Field("keep", description="the task head has no pre-trained counterpart")


class MixingDetails(StepDetails):
    shown = ("rho", "val_accuracy", "suspect_val_accuracy")

    rho: float = Field(description="the kept fraction of (w_B - w_P)")
    val_accuracy: float = Field(description="the mixed (and fine-tuned) model's held-out clean accuracy")
    suspect_val_accuracy: float = Field(description="the suspect's held-out clean accuracy")
    curve: list[dict[str, float]] | None = Field(None, description="held-out accuracy per rho tried (rho unset)")
    mixed_tensors: int = Field(description="tensors mixed")
    skipped_tensors: int = Field(description="tensors the reference lacks or shapes differently")


def mix_weights(victim: Victim, reference: dict[str, torch.Tensor], rho: float, mask: MaskMode = "random",
                seed: int = 0, head: Literal["keep", "reinit"] = "keep") -> dict[str, int]:
    """Mix `victim`'s base-model weights with `reference` in place; returns counts of mixed/skipped tensors."""
    generator = torch.Generator().manual_seed(seed)
    mixed = skipped = 0
    with torch.no_grad():
        for name, w_b in victim.model.base_model.state_dict().items():
            w_p = reference.get(name)
            if w_p is None or w_p.shape != w_b.shape or not w_b.is_floating_point():
                skipped += 1
                continue
            w_p = w_p.to(w_b.device, w_b.dtype)
            n = w_b.numel()
            k = int(round(rho * n))
            if mask == "random":
                idx = torch.randperm(n, generator=generator)[:k].to(w_b.device)
            else:
                change = (w_b - w_p).abs().flatten()
                idx = torch.topk(change if mask == "top" else -change, k).indices
            keep = torch.zeros(n, dtype=torch.bool, device=w_b.device)
            keep[idx] = True
            w_b.copy_(torch.where(keep.view_as(w_b), w_b, w_p))
            mixed += 1
        if head == "reinit":
            torch.manual_seed(seed)
            base = set(victim.model.base_model.modules())
            for module in victim.model.modules():
                if module not in base and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return {"mixed_tensors": mixed, "skipped_tensors": skipped}


def _mix_and_score(victim: Victim, context: Context, config: MixingConfig, reference: dict[str, torch.Tensor],
                   rho: float, tune: bool) -> tuple[Victim, float, dict[str, Any]]:
    candidate = copy.deepcopy(victim)
    info: dict[str, Any] = mix_weights(candidate, reference, rho, config.mask, config.seed, config.head)
    if tune:
        info["train"] = fine_tune(candidate, context, config)
    val = context.clean.val
    return candidate, accuracy_on(candidate, val), info


def _mixing(victim: Victim, context: Context, config: MixingConfig, tune: bool) -> tuple[Victim, MixingDetails]:
    assert context.reference is not None
    reference = reference_state(victim, context.reference, "finemixing" if tune else "mixing")
    val = context.clean.val
    baseline = accuracy_on(victim, val)
    if config.rho is not None:
        chosen, acc, info = _mix_and_score(victim, context, config, reference, config.rho, tune)
        return chosen, MixingDetails(rho=config.rho, val_accuracy=acc, suspect_val_accuracy=baseline, **info)
    curve: list[dict[str, Any]] = []
    candidates = []
    for rho in sorted(config.rho_grid):
        candidate, acc, info = _mix_and_score(victim, context, config, reference, rho, tune)
        curve.append({"rho": rho, "val_accuracy": acc})
        candidates.append((rho, acc, candidate, info))
        log.info("rho %.2f: held-out clean accuracy %.4f", rho, acc)
    best = max(acc for _, acc, _, _ in candidates)
    rho, acc, candidate, info = next(c for c in candidates if c[1] >= best - config.tolerance)
    return candidate, MixingDetails(rho=rho, val_accuracy=acc, suspect_val_accuracy=baseline, curve=curve, **info)


@register("mixing", MixingConfig, needs_reference=True)
def mixing(victim: Victim, context: Context, config: MixingConfig) -> tuple[Victim, MixingDetails]:
    """Mix with the pre-trained weights (no fine-tuning; the ablation)."""
    return _mixing(victim, context, config, tune=False)


@register("finemixing", MixingConfig, needs_reference=True)
def finemixing(victim: Victim, context: Context, config: MixingConfig) -> tuple[Victim, MixingDetails]:
    """Mix with the pre-trained weights, then fine-tune on the clean subset."""
    return _mixing(victim, context, config, tune=True)
