"""Fine-pruning (Liu et al., RAID 2018) adapted to transformer FFNs.

Record each FFN neuron's mean activation on the clean subset (the input of the FFN's down projection:
post-GELU, or post-gate in gated FFNs; models/arch.py finds it in every family); in every block, cut the
least active fraction off (its weights into the down projection are zeroed, so it contributes exactly
nothing); raise the fraction along `ratios` until held-out clean accuracy drops by more than `tolerance`,
keep the last fraction that did not; then fine-tune with the pruned neurons held at zero.
Departure from the paper (one CNN layer): every transformer block is pruned, each by its own ranking (a
block shared by all layers, as in ALBERT, is ranked over all its uses).
Selection uses held-out clean accuracy only, never ASR.
"""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from detrigger.batching import bucketed_batches, collate, encode
from detrigger.defences.base import Context, DefenceConfig, StepDetails, register
from detrigger.models.arch import ffn_down_projections, ffn_width, zero_ffn_inputs
from detrigger.models.predict import accuracy_on
from detrigger.models.victim import Victim
from detrigger.training.loop import train

log = logging.getLogger(__name__)


class FinePruningConfig(DefenceConfig):
    ratios: tuple[float, ...] = Field((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                      description="pruned fractions per layer, tried in increasing order")
    tolerance: float = Field(0.02, ge=0, description="allowed drop of held-out clean accuracy")


class PruningDetails(StepDetails):
    shown = ("suspect_val_accuracy",)

    ratio: float = Field(description="the pruned fraction chosen")
    suspect_val_accuracy: float = Field(description="the suspect's held-out clean accuracy")
    curve: list[dict[str, float]] = Field(description="held-out clean accuracy per ratio tried")


@torch.no_grad()
def mean_activations(victim: Victim, texts: list[str], batch_size: int = 64) -> list[torch.Tensor]:
    """Per block, each FFN neuron's mean activation (its down projection's input) over the non-pad tokens of
    `texts`."""
    downs = ffn_down_projections(victim.model, "finepruning")
    sums = [torch.zeros(ffn_width(d)) for d in downs]
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(i: int):
        def fn(module, inputs):
            m = mask_holder["mask"].unsqueeze(-1).to(inputs[0].dtype)
            sums[i] += (inputs[0] * m).sum(dim=(0, 1)).float().cpu()
        return fn

    handles = [d.register_forward_pre_hook(hook(i)) for i, d in enumerate(downs)]
    victim.model.eval()
    ids = encode(victim.tokenizer, texts, victim.max_length)
    tokens = 0
    try:
        for batch in bucketed_batches([len(x) for x in ids], batch_size):
            inputs = collate([ids[i] for i in batch], victim.tokenizer.pad_token_id, victim.device)
            mask_holder["mask"] = inputs["attention_mask"]
            tokens += int(inputs["attention_mask"].sum())
            victim.model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return [s / tokens for s in sums]


def prune_masks(activations: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Per layer, True for the neurons to prune: the round(ratio * width) least active."""
    masks = []
    for act in activations:
        mask = torch.zeros_like(act, dtype=torch.bool)
        mask[torch.argsort(act)[: int(round(ratio * len(act)))]] = True
        masks.append(mask)
    return masks


def apply_pruning(victim: Victim, masks: list[torch.Tensor]) -> None:
    """Cut the masked neurons of every block off (`zero_ffn_inputs`)."""
    for down, mask in zip(ffn_down_projections(victim.model, "finepruning"), masks):
        zero_ffn_inputs(down, mask)


@register("finepruning", FinePruningConfig, needs_reference=False)
def finepruning(victim: Victim, context: Context, config: FinePruningConfig) -> tuple[Victim, PruningDetails]:
    """Prune FFN neurons dormant on clean data, then fine-tune."""
    val = context.clean.val
    activations = mean_activations(victim, list(context.clean.train.texts))
    baseline = accuracy_on(victim, val)
    original = {k: v.clone() for k, v in victim.model.state_dict().items()}
    curve, chosen = [], 0.0
    for ratio in sorted(config.ratios):
        apply_pruning(victim, prune_masks(activations, ratio))
        acc = accuracy_on(victim, val)
        curve.append({"ratio": ratio, "val_accuracy": acc})
        victim.model.load_state_dict(original)
        if acc < baseline - config.tolerance:
            break
        chosen = ratio
    log.info("fine-pruning: ratio %.2f chosen (suspect model held-out accuracy %.4f)", chosen, baseline)
    masks = prune_masks(activations, chosen)
    apply_pruning(victim, masks)
    cfg = config.train.model_copy(update={"seed": config.seed})
    result = train(victim, context.clean.train, context.clean.val, cfg, after_step=lambda: apply_pruning(victim, masks))
    return victim, PruningDetails(ratio=chosen, suspect_val_accuracy=baseline, curve=curve, train=result.as_dict())
