"""RIPPLe's restricted inner-product term (Kurita, Michel, Neubig, "Weight Poisoning Attacks on Pre-trained
Models", ACL 2020), as an extra loss term of the one training loop.

RIPPLe trains on the poisoning loss L_P plus lambda * max(0, -grad L_P . grad L_FT), where L_FT is the loss
of the fine-tuning the victim's user will run (proxied by clean data of the task). The term penalises
steps where the user's fine-tuning would move against the poisoning objective, so that the backdoor
survives further fine-tuning. Together with embedding surgery it is RIPPLES (`attack: ripple`).

Departures (all measured in docs/attacks.md):
- the loop's own cross-entropy on its batch is L_P's first-order term; the inner product is computed on a
  separate poisoned batch and a clean batch drawn here (the loop hands extra terms no labels). Independent
  batches give an unbiased estimate of the inner product of the two expected gradients.
- lambda default 0.1, as in the RIPPLe repository's example configuration; each gradient is taken on 8
  texts, the per-step batch of that configuration (it accumulates 4 of them), which also keeps the double
  backward affordable on a CPU (about 6x a plain step at 32 texts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detrigger.batching import collate, encode
from detrigger.data.dataset import TextDataset
from detrigger.models.victim import Victim


class RestrictedInnerProduct:
    """The extra loss term weight * relu(-grad L_P . grad L_FT) over every trainable parameter, with
    L_P on a batch of `poisoned` and L_FT on a batch of `clean`, both drawn with a seeded generator.

    Needs second-order gradients (a double backward through the encoder); on a step where the inner product
    is already non-negative the term is zero and that backward is skipped.
    """

    def __init__(self, victim: Victim, poisoned: TextDataset, clean: TextDataset, *, weight: float,
                 batch_size: int, seed: int) -> None:
        self.victim = victim
        self.weight = weight
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, 2])
        self.data = [(encode(victim.tokenizer, d.texts, victim.max_length), torch.as_tensor(d.labels))
                     for d in (poisoned, clean)]

    def _gradient(self, which: int, params: list[torch.nn.Parameter], device: torch.device) -> tuple:
        ids, labels = self.data[which]
        batch = self.rng.choice(len(ids), size=min(self.batch_size, len(ids)), replace=False)
        inputs = collate([ids[i] for i in batch], self.victim.tokenizer.pad_token_id, device)
        loss = F.cross_entropy(self.victim.model(**inputs).logits.float(), labels[batch].to(device))
        return torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)

    def __call__(self, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        params = [p for p in self.victim.model.parameters() if p.requires_grad]
        device = inputs["input_ids"].device
        poison_grad = self._gradient(0, params, device)
        clean_grad = self._gradient(1, params, device)
        inner = sum((a * b).sum() for a, b in zip(poison_grad, clean_grad) if a is not None and b is not None)
        if inner.detach() >= 0:  # the term is zero: skip the double backward through both gradients
            return inner.new_zeros(())
        return -self.weight * inner
