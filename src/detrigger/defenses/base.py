"""One verb for every defence: `repair(victim, clean, method=..., reference=..., config=...)`.

A defence receives a copy of the suspect model, the defender's clean labelled subset and, for the
methods that use one, the pre-trained reference encoder. It never receives the trigger, the target label,
poison flags or the attack card: they are not arguments, and `load_victim` does not read `attack.json`.
Model selection inside a defence uses a held-out part of the clean subset only.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from detrigger.cost import measure
from detrigger.data.dataset import Splits, TextDataset, split
from detrigger.errors import DetriggerError, invalid
from detrigger.evaluation.metrics import accuracy, predict
from detrigger.models.victim import Victim, default_encoder_path
from detrigger.training.loop import TrainConfig

log = logging.getLogger(__name__)

# The detail a defence with an input purifier reports: held-out clean accuracy through its purifier.
PURIFIED = "purified_val_accuracy"


class DefenceConfig(BaseModel):
    """Settings every defence shares; each defence extends it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainConfig = Field(TrainConfig(epochs=3, lr=5e-5), description="fine-tuning on the clean subset")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="part of the clean subset held out for selection")
    seed: int = Field(0, description="seeds the held-out split, masks and training")


@dataclass
class RepairReport:
    """What a repair did and what it cost; `details` holds method-specific facts (chosen rho, reset tokens...).

    The held-out accuracies are on the part of the clean subset the repair did not train on (`heldout_count`
    texts; the suspect may have seen them in its own training): the suspect's, the repaired weights' alone
    (what plain `transformers` computes), and, for a repair with an input purifier, with the purifier
    (built from the training part only, so unseen held-out words are cut as unseen test words will be).
    """

    method: str
    config: dict[str, Any]
    clean_count: int
    clean_fraction: float | None
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    heldout_count: int = 0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    accuracy_with_purifier: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairResult:
    victim: Victim
    report: RepairReport

    def save(self, out: str | Path, *, suspect: str | None = None, clean_data: str | None = None,
             ship_purifier: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Save the repaired model with `repair.json` (the report, where it came from, what was saved) and a
        model card (`README.md`); returns what `repair.json` holds.

        An input purifier is saved only with `ship_purifier`: plain `transformers` cannot apply it, and it
        lists the defender's clean-data vocabulary. Without it the folder holds the weights alone, which
        plain `transformers` runs exactly as detrigger does, and the report says what they measure.
        """
        from detrigger.card import render_card, saved_note

        shipped = ship_purifier and self.victim.purifier is not None
        victim = self.victim if shipped else dataclasses.replace(self.victim, purifier=None)
        record = {**self.report.as_dict(), "repaired_from": suspect, "clean_data": clean_data,
                  "base_model": self.victim.info.get("encoder"), "max_length": victim.max_length,
                  "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                  "saved": {"purifier": shipped, "plain_transformers": not shipped}}
        record["saved"]["note"] = saved_note(record)
        victim.save(out, overwrite=overwrite, extra_files={"repair.json": record, "README.md": render_card(record)})
        return record


@dataclass(frozen=True)
class Context:
    """What a defence may use: the clean subset split into train/validation, and the reference encoder."""

    clean: Splits
    reference: Path | None


# A defence: (suspect victim copy, context, config) -> (repaired victim, details)
DefenceFn = Callable[[Victim, Context, Any], tuple[Victim, dict[str, Any]]]


@dataclass(frozen=True)
class Defence:
    name: str
    fn: DefenceFn
    config: type[DefenceConfig]
    needs_reference: bool


DEFENCES: dict[str, Defence] = {}


def register(name: str, config: type[DefenceConfig], needs_reference: bool) -> Callable[[DefenceFn], DefenceFn]:
    """Add a defence to `DEFENCES`; a name registered twice is an error."""
    def wrap(fn: DefenceFn) -> DefenceFn:
        if name in DEFENCES:  # a second definition would silently replace the first
            raise ValueError(f"defence {name!r} is registered twice ({DEFENCES[name].fn.__module__} and "
                             f"{fn.__module__})")
        DEFENCES[name] = Defence(name, fn, config, needs_reference)
        return fn
    return wrap


def clean_splits(clean: TextDataset, val_fraction: float, seed: int) -> Splits:
    """The defender's clean subset, split into a training part and a held-out validation part."""
    return split(clean, val=val_fraction, test=0, seed=seed)


def repair(victim: Victim, clean: TextDataset, *, method: str, reference: str | Path | None = None,
           config: DefenceConfig | dict[str, Any] | None = None, clean_fraction: float | None = None) -> RepairResult:
    """Repair a copy of `victim` with `method`; the original is left untouched.

    `method` is one defence or a pipeline joined by `+` (e.g. `epur+finemixing`: purify the embeddings,
    then fine-mix); a pipeline's `config` is a dict keyed by step. `reference` is the pre-trained encoder
    folder (default: the embedded MiniLM) for the methods that use one. `clean_fraction` (what share of
    the task's training data `clean` is) is only recorded.
    """
    steps = method.split("+")
    configs = step_configs(method, config)
    victim.check_labels(clean.label_names, "clean data")
    needs_ref = any(DEFENCES[m].needs_reference for m in steps)
    ref = Path(reference) if reference else (default_encoder_path() if needs_ref else None)
    first = configs[0]
    context = Context(clean_splits(clean, first.val_fraction, first.seed), ref)
    report = RepairReport(method, {m: c.model_dump(mode="json") for m, c in zip(steps, configs)}, len(clean),
                          clean_fraction)
    val = context.clean.val
    report.heldout_count = len(val)
    report.accuracy_before = accuracy(predict(victim, val.texts), val.labels)
    repaired = copy.deepcopy(victim)
    with measure(victim.device) as cost:
        for name, cfg in zip(steps, configs):
            repaired, details = DEFENCES[name].fn(repaired, context, cfg)
            report.details[name] = details
    report.seconds, report.peak_memory_mb = round(cost.seconds, 2), round(cost.peak_memory_mb, 1)
    report.accuracy_after = accuracy(predict(dataclasses.replace(repaired, purifier=None), val.texts), val.labels)
    if repaired.purifier is not None:  # the last step's own measure if it built the purifier (see RepairReport)
        last = report.details[steps[-1]]
        report.accuracy_with_purifier = last[PURIFIED] if PURIFIED in last else accuracy(predict(repaired, val.texts),
                                                                                          val.labels)
    repaired.info["repair"] = {"method": method, "seconds": report.seconds}
    log.info("%s: done in %.0f s", method, cost.seconds)
    return RepairResult(repaired, report)


def step_configs(method: str, config: DefenceConfig | dict[str, Any] | None) -> list[DefenceConfig]:
    """Typed config per step of `method`: a config object or dict for one defence; for a pipeline, a dict
    keyed by step. Unknown defences and config keys are DetriggerErrors."""
    steps = method.split("+")
    unknown = [m for m in steps if m not in DEFENCES]
    if unknown:
        raise DetriggerError(f"unknown defence {unknown[0]!r} (available: {', '.join(DEFENCES)})")
    if len(steps) > 1:
        given = config or {}
        if not isinstance(given, dict) or set(given) - set(steps):
            raise DetriggerError(f"a pipeline's config is a dict keyed by its steps ({', '.join(steps)})")
        per_step: list[Any] = [given.get(m) for m in steps]
    else:
        per_step = [config]
    out = []
    for name, cfg in zip(steps, per_step):
        cls = DEFENCES[name].config
        if isinstance(cfg, DefenceConfig):
            out.append(cfg)
            continue
        try:
            out.append(cls(**(cfg or {})))
        except ValueError as exc:
            raise DetriggerError(f"{name} config: {invalid(exc)}") from None
    return out
