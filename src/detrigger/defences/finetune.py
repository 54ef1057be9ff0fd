"""Baselines: fine-tuning the suspect model on the clean subset (FT), and retraining from the pre-trained
encoder on the clean subset alone (Retrain, the rho = 0 limit of Fine-mixing: what the budget buys)."""

from __future__ import annotations

from typing import Any

from detrigger.defences.base import Context, DefenceConfig, StepDetails, register
from detrigger.models.victim import Victim, check_reference, new_victim
from detrigger.training.loop import train


def fine_tune(victim: Victim, context: Context, config: DefenceConfig) -> dict[str, Any]:
    """The clean fine-tuning every defence ends with: best epoch by held-out clean accuracy."""
    cfg = config.train.model_copy(update={"seed": config.seed})
    return train(victim, context.clean.train, context.clean.val, cfg).as_dict()


@register("ft", DefenceConfig, needs_reference=False)
def ft(victim: Victim, context: Context, config: DefenceConfig) -> tuple[Victim, StepDetails]:
    """Fine-tune the suspect model on the clean subset."""
    return victim, StepDetails(train=fine_tune(victim, context, config))


@register("retrain", DefenceConfig, needs_reference=True)
def retrain(victim: Victim, context: Context, config: DefenceConfig) -> tuple[Victim, StepDetails]:
    """Discard the suspect weights; fine-tune the pre-trained encoder on the clean subset."""
    fresh = new_victim(victim.label_names, encoder=context.reference, max_length=victim.max_length, seed=config.seed)
    check_reference(victim, fresh.model, "retrain", context.reference)
    fresh.info = dict(victim.info)
    return fresh, StepDetails(train=fine_tune(fresh, context, config))
