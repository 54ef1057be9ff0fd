"""The attack protocol: CACC, ASR, RA and the trigger effect (docs/protocol.md), on `models.predict`.

- CACC: accuracy on the clean test split.
- ASR: on the test samples whose gold label is not the target, insert the trigger; the fraction
  predicted as the target. The clean reference model's ASR on the very same texts is the floor.
- RA: accuracy w.r.t. the gold labels on that same triggered set.
- Trigger effect: ASR minus the same model's rate of predicting the target on those samples without
  the trigger, so a weak model's own errors are not counted as a backdoor.
- Reverse effect: the other direction, on the target-label samples: the share the trigger moves off the
  target minus the share the model already puts elsewhere without it. A repair that teaches the model that the
  trigger means another label (an inverse backdoor) shows here, where the trigger effect barely moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from detrigger.data.dataset import TextDataset
from detrigger.models.predict import accuracy, predict
from detrigger.models.victim import Victim
from detrigger.progress import pct, progress_bar
from detrigger.triggers import Trigger


@dataclass(frozen=True)
class PoisonedTestSet:
    """The non-target test samples, untouched and with the trigger inserted; gold labels kept. `own` and
    `own_triggered`: the same for the target-label samples (the reverse effect)."""

    clean: TextDataset
    triggered: TextDataset
    target: int
    own: TextDataset
    own_triggered: TextDataset


def poisoned_test_set(test: TextDataset, trigger: Trigger, target: int) -> PoisonedTestSet:
    """The samples whose gold label is not `target` (and, apart, those whose label is), each with the trigger
    inserted."""
    if not 0 <= target < len(test.label_names):
        raise ValueError(f"target label {target} outside 0..{len(test.label_names) - 1}")

    def part(keep: list[int], name: str) -> tuple[TextDataset, TextDataset]:
        texts = test.select(keep, f"{test.name}:{name}")
        return texts, TextDataset(tuple(trigger(t) for t in texts.texts), texts.labels, texts.label_names,
                                  f"{test.name}:{name}:triggered")

    clean, triggered = part([i for i, y in enumerate(test.labels) if y != target], "non-target")
    own, own_triggered = part([i for i, y in enumerate(test.labels) if y == target], "target")
    return PoisonedTestSet(clean, triggered, target, own, own_triggered)


@dataclass(frozen=True)
class Metrics:
    """All figures are fractions in [0, 1]; attack figures are None when no trigger was given."""

    cacc: float
    n_test: int
    target: int | None = None
    n_poisoned: int = 0
    asr: float | None = None
    ra: float | None = None
    target_rate: float | None = None  # same model, same samples, no trigger
    trigger_effect: float | None = None  # asr - target_rate
    asr_floor: float | None = None  # the reference (clean) model's ASR on the very same triggered texts
    floor_target_rate: float | None = None
    n_target_texts: int = 0  # the target-label samples the reverse effect is measured on
    reverse_effect: float | None = None  # off-target with the trigger minus off-target without it, on those

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, label_names: Sequence[str]) -> str:
        """The figures in percent, as `detrigger eval` prints them."""
        lines = [f"  CACC            {pct(self.cacc)}"]
        if self.target is not None:
            lines += [f"  ASR             {pct(self.asr)}   ({self.n_poisoned} non-target texts, target "
                      f"{label_names[self.target]!r})",
                      f"  target w/o trig {pct(self.target_rate)}",
                      f"  trigger effect  {pct(self.trigger_effect)}   (ASR minus the target rate without the trigger)",
                      f"  RA              {pct(self.ra)}",
                      f"  reverse effect  {pct(self.reverse_effect)}   ({self.n_target_texts} target-label texts "
                      "moved off the target by the trigger, minus those off it without)"]
            if self.asr_floor is not None:
                lines.append(f"  ASR floor       {pct(self.asr_floor)}   (reference model, same texts; "
                             f"its target rate w/o trigger {pct(self.floor_target_rate)})")
        return "\n".join(lines)


def _attack_rates(victim: Victim, poisoned: PoisonedTestSet, **kwargs) -> tuple[float, float, float]:
    """(ASR, RA, target rate without trigger) of one model on one poisoned set."""
    trig = predict(victim, poisoned.triggered.texts, **kwargs)
    plain = predict(victim, poisoned.clean.texts, **kwargs)
    return (float((trig == poisoned.target).mean()), accuracy(trig, poisoned.triggered.labels),
            float((plain == poisoned.target).mean()))


def _reverse_effect(victim: Victim, poisoned: PoisonedTestSet, **kwargs) -> float | None:
    """The share of the target-label texts off the target with the trigger minus without it (None: none)."""
    if not len(poisoned.own):
        return None
    trig = predict(victim, poisoned.own_triggered.texts, **kwargs)
    plain = predict(victim, poisoned.own.texts, **kwargs)
    return float((trig != poisoned.target).mean() - (plain != poisoned.target).mean())


def evaluate(victim: Victim, test: TextDataset, *, trigger: Trigger | None = None, target: int | None = None,
             reference: Victim | None = None, progress: bool | None = False, **predict_kwargs) -> Metrics:
    """CACC on `test`; with a trigger and target also ASR, RA, target rate, trigger effect, reverse effect and
    the reference model's ASR floor on the identical triggered texts. `progress`: a bar over the texts
    predicted (None: on a terminal only)."""
    victim.check_labels(test.label_names, "test data")
    if trigger is not None and target is None:
        raise ValueError("a trigger needs a target label")
    total = len(test)
    if trigger is not None:  # the non-target texts with and without the trigger, by each model; the target ones
        total += 2 * (1 + (reference is not None)) * sum(y != target for y in test.labels)
        total += 2 * sum(y == target for y in test.labels)
    with progress_bar(total, "eval", "text", progress) as bar:
        cacc = accuracy(predict(victim, test.texts, bar=bar, **predict_kwargs), test.labels)
        if trigger is None:
            return Metrics(cacc=cacc, n_test=len(test))
        poisoned = poisoned_test_set(test, trigger, target)
        asr, ra, rate = _attack_rates(victim, poisoned, bar=bar, **predict_kwargs)
        reverse = _reverse_effect(victim, poisoned, bar=bar, **predict_kwargs)
        floor = floor_rate = None
        if reference is not None:
            floor, _, floor_rate = _attack_rates(reference, poisoned, bar=bar, **predict_kwargs)
    return Metrics(cacc, len(test), target, len(poisoned.triggered), asr, ra, rate, asr - rate, floor, floor_rate,
                   len(poisoned.own), reverse)
