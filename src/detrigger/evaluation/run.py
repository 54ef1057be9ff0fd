"""`detrigger eval` as one call (`EvalOptions.run`): a model's figures on a data source, the texts split as the
model recorded them, and the ASR floor of a clean reference model on the same triggered texts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.data import SOURCE, Part, default_part
from detrigger.evaluation.metrics import evaluate
from detrigger.models.victim import MODEL_SOURCE, Victim, load_victim
from detrigger.triggers import Trigger


class EvalOptions(BaseModel):
    """What `detrigger eval` is given besides the trigger and how to load the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description=MODEL_SOURCE, json_schema_extra=POSITIONAL)
    data: str = Field(description=SOURCE, json_schema_extra=POSITIONAL)
    split: Part | None = Field(None, description="default: test of a built-in corpus, all of a file")
    reference: str | None = Field(None, description="a clean model: its ASR on the same texts is the floor")

    def run(self, victim: Victim, trigger: Trigger | None = None, target: int | None = None, *,
            allow_pickle: bool = False, progress: bool | None = None,
            **data_options: Any) -> tuple[dict[str, Any], str]:
        """`victim` (loaded from `model`) on the split of the data: CACC, and with a trigger and target (evaluation
        only) ASR, RA and the trigger effect; the reference, loaded on the victim's device, its labels the
        victim's, gives the ASR floor. Returns the record and the text `detrigger eval` prints."""
        floor = None
        if self.reference:
            floor = load_victim(self.reference, allow_pickle=allow_pickle)
            floor.model.to(victim.device)
            victim.check_labels(floor.label_names, f"{self.reference}:")
        split = self.split or default_part(self.data, "test")
        test = victim.texts(self.data, split, **data_options)
        m = evaluate(victim, test, trigger=trigger, target=target, reference=floor, progress=progress)
        text = f"{self.model} on {self.data} ({split}, {m.n_test} texts)\n{m.text(victim.label_names)}"
        return {"model": self.model, "data": self.data, "split": split, **m.as_dict()}, text
