"""`detrigger eval` as one call (`run_eval`): a model's figures on a data source, the texts split as the model
recorded them, and the ASR floor of a clean reference model on the same triggered texts."""

from __future__ import annotations

from typing import Any

from detrigger.data import Part, default_part, load_part
from detrigger.evaluation.metrics import evaluate
from detrigger.models.victim import Victim, load_victim
from detrigger.triggers import Trigger


def run_eval(victim: Victim, data: str, *, model: str, split: Part | None = None, trigger: Trigger | None = None,
             target: int | None = None, reference: str | None = None, allow_pickle: bool = False,
             progress: bool | None = None, **data_options: Any) -> tuple[dict[str, Any], str]:
    """`victim` (the folder or hub id `model`) on `split` of `data` (default: test of a built-in corpus, all of a
    file): CACC, and with a trigger and target (evaluation only) ASR, RA and the trigger effect; `reference`, a clean
    model loaded on the victim's device whose labels must be the victim's, gives the ASR floor. Returns the record
    and the text `detrigger eval` prints."""
    floor = None
    if reference:
        floor = load_victim(reference, allow_pickle=allow_pickle)
        floor.model.to(victim.device)
        victim.check_labels(floor.label_names, f"{reference}:")
    split = split or default_part(data, "test")
    test = load_part(data, split, label_names=victim.label_names, recorded=victim.info.get("data"), **data_options)
    m = evaluate(victim, test, trigger=trigger, target=target, reference=floor, progress=progress)
    text = f"{model} on {data} ({split}, {m.n_test} texts)\n{m.text(victim.label_names)}"
    return {"model": model, "data": data, "split": split, **m.as_dict()}, text
