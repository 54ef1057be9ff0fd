"""E-PUR, embedding purification (Zhang et al., Fine-mixing paper).

Score every vocabulary token k by s_k = ||e_B[k] - e_P[k]||_2 / log(max(f_k, floor)), where f_k is how often
the token occurs in the defender's clean text (tokenised with the model's own tokenizer): a trigger's row
moved a lot although the token is rare. Reset the top-N rows to the pre-trained embeddings. Compose it in
front of another defence with a pipeline (`epur+finemixing`). The floor (20) and N (200) are the paper's
order of magnitude; both are options.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from pydantic import Field

from detrigger.batching import encode
from detrigger.defences.base import Context, DefenceConfig, StepDetails, StepFacts, register
from detrigger.errors import DetriggerError
from detrigger.models.arch import embedding_key, family
from detrigger.models.victim import Victim, reference_embeddings, reference_state


class EpurConfig(DefenceConfig):
    top_n: int = Field(200, ge=1, description="rows reset to the pre-trained embeddings")
    freq_floor: int = Field(20, ge=2, description="frequencies below this count as this (keeps log > 0)")
    report: int = Field(20, ge=0, description="flagged tokens listed in the report")


class EpurDetails(StepDetails):
    shown = ("reset_rows",)

    reset_rows: int = Field(description="embedding rows reset")
    flagged: list[dict[str, Any]] = Field(description="the top-scored tokens: token, id, score")
    score_threshold: float = Field(description="the lowest score reset")

    def facts(self) -> StepFacts:
        return StepFacts(reset_rows=self.reset_rows, flagged=[t["token"] for t in self.flagged[:10]])

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "flagged": " ".join(t["token"] for t in self.flagged[:10])}


def epur_scores(victim: Victim, reference: dict[str, torch.Tensor], texts: list[str],
                freq_floor: int = 20) -> torch.Tensor:
    """s_k for every row of the input embedding matrix (`reference`: a pre-trained model's base-model tensors)."""
    e_b = victim.model.get_input_embeddings().weight.detach().cpu()
    e_p = reference_embeddings(victim, reference)
    if e_p is None:
        raise DetriggerError(f"the reference has no input embeddings of the {family(victim.model)} model's shape "
                             f"{tuple(e_b.shape)}: pass the suspect's own pre-trained base model (docs/models.md)")
    e_p = e_p.to(e_b.dtype)
    counts: Counter[int] = Counter()
    for ids in encode(victim.tokenizer, texts, victim.max_length):
        counts.update(ids)
    freq = torch.full((e_b.shape[0],), float(freq_floor))
    for token, n in counts.items():
        freq[token] = max(n, freq_floor)
    return (e_b - e_p).norm(dim=1) / torch.log(freq)


def reset_rows(victim: Victim, reference: dict[str, torch.Tensor], ids: torch.Tensor | list[int]) -> None:
    """Put the reference's (pre-trained) embedding rows `ids` back into the model, in place."""
    ids = torch.as_tensor(ids, dtype=torch.long)  # an empty list would be a float tensor
    emb = victim.model.get_input_embeddings().weight
    with torch.no_grad():
        emb[ids.to(emb.device)] = reference[embedding_key(victim.model)][ids].to(emb.device, emb.dtype)


@register("epur", EpurConfig, needs_reference=True)
def epur(victim: Victim, context: Context, config: EpurConfig) -> tuple[Victim, EpurDetails]:
    """Reset the embedding rows that moved most for their clean-text frequency."""
    assert context.reference is not None
    reference = reference_state(victim, context.reference, "epur")
    texts = list(context.clean.train.texts) + list(context.clean.val.texts)
    scores = epur_scores(victim, reference, texts, config.freq_floor)
    top = torch.topk(scores, min(config.top_n, len(scores))).indices
    reset_rows(victim, reference, top)
    tokens = victim.tokenizer.convert_ids_to_tokens(top[:config.report].tolist())
    flagged = [{"token": t, "id": int(i), "score": round(float(scores[i]), 4)}
               for t, i in zip(tokens, top[:config.report])]
    return victim, EpurDetails(reset_rows=len(top), flagged=flagged, score_threshold=float(scores[top[-1]]))
