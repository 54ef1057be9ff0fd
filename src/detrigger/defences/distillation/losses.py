"""Distillation losses for the one training loop: attention maps and hidden states towards a frozen teacher.

`distillation(teacher, ...)` returns an extra loss term for `train()`: on every batch it runs the frozen
teacher on the same inputs and compares, per selected layer,
- self-attention probability maps: MSE over pairs of non-pad query/key positions, averaged over heads;
- hidden states: MSE over non-pad tokens, averaged over the hidden dimension;
each then averaged over layers and weighted by its beta. The student must run with eager attention (with
sdpa, transformers 5 returns no attention maps) and with attention dropout off, since the maps are taken
after dropout in train mode: `prepare_student()` does both, for any family (models/arch.py); a family
that cannot return maps is an error naming the method, unless beta_att is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from detrigger.errors import DetriggerError
from detrigger.models.arch import attention_dropout_off, eager_attention, family
from detrigger.models.victim import Victim

FORWARD_KWARGS = {"output_attentions": True, "output_hidden_states": True}


def attention_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
                   layers: Sequence[int] | None = None) -> torch.Tensor:
    """Mean over layers of the masked MSE between [batch, heads, query, key] attention maps."""
    pair = (mask[:, None, :, None] * mask[:, None, None, :]).to(student[0].dtype)
    idx = range(len(student)) if layers is None else layers
    losses = []
    for i in idx:
        s, t = student[i], teacher[i]
        losses.append(((s - t) ** 2 * pair).sum() / (pair.sum() * s.shape[1]))
    return torch.stack(losses).mean()


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor,
                layers: Sequence[int] | None = None) -> torch.Tensor:
    """Mean over layers of the MSE between [batch, tokens, hidden] states on non-pad tokens.

    `student` / `teacher` are the model's `hidden_states` (embeddings first); layer i is output i + 1.
    """
    m = mask[..., None].to(student[0].dtype)
    idx = range(len(student) - 1) if layers is None else layers
    losses = [(((student[i + 1] - teacher[i + 1]) ** 2) * m).sum() / (m.sum() * student[0].shape[-1]) for i in idx]
    return torch.stack(losses).mean()


def prepare_student(victim: Victim, method: str = "distillation") -> None:
    """Eager attention (so maps are returned) and attention dropout off (so they are comparable)."""
    eager_attention(victim.model, method)
    attention_dropout_off(victim.model)


def distillation(teacher: Victim, *, beta_att: float = 1.0, beta_hid: float = 1.0,
                 layers: Sequence[int] | None = None, method: str = "distillation"):
    """An extra loss term (for `train(..., extra_losses=..., forward_kwargs=FORWARD_KWARGS)`)."""
    if beta_att:
        eager_attention(teacher.model, method)
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)

    def term(batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        with torch.no_grad():
            t = teacher.model.to(batch["input_ids"].device)(**batch, **FORWARD_KWARGS)
        mask = batch["attention_mask"]
        loss = outputs.logits.new_zeros(())
        if beta_att:
            if not outputs.attentions:
                raise DetriggerError(f"{method}: the {family(teacher.model)} model returned no attention maps; "
                                     "distil hidden states only (beta_att 0)")
            loss = loss + beta_att * attention_loss(outputs.attentions, t.attentions, mask, layers)
        if beta_hid:
            loss = loss + beta_hid * hidden_loss(outputs.hidden_states, t.hidden_states, mask, layers)
        return loss

    return term
