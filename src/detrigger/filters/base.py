"""Input-level defences: a filter sits in front of a suspect model and rejects (or rewrites) the texts that look
triggered, without changing the model.

Every filter is fitted on the defender's clean labelled texts only. It never receives the trigger, the target
label, poison flags or the attack card: they are not arguments. Part of the clean texts (`calibration_fraction`)
is held out from fitting, and the filter's threshold is set on that part so that a chosen share of clean texts
(`frr`, default 5%) is flagged, as the STRIP, RAP and ONION papers set theirs on clean validation data.

Two kinds:
- a *detector* (STRIP, RAP, BKI) scores each text (higher = more suspicious) and rejects the texts scored above
  the threshold; the rest reach the model unchanged;
- a *purifier* (ONION) lets every text through, with the words it finds suspicious removed; a text counts as
  flagged when at least one word was removed.

`evaluate_filter` measures a fitted filter on a test set: FRR, FAR and the model's CACC / ASR on what the filter
lets through (docs/filters.md says exactly how).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError, invalid
from detrigger.evaluation.metrics import poisoned_test_set
from detrigger.io import atomic_dir, write_json
from detrigger.models.predict import accuracy, predict
from detrigger.models.victim import Victim
from detrigger.progress import pct, progress_bar
from detrigger.triggers import Trigger

log = logging.getLogger(__name__)


class FilterConfig(BaseModel):
    """Settings every filter shares; each filter extends it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frr: float = Field(0.05, ge=0, lt=1, description="share of held-out clean texts the threshold flags")
    threshold: float | None = Field(None, description="use this threshold instead of calibrating one at `frr`")
    calibration_fraction: float = Field(0.5, gt=0, lt=1,
                                        description="part of the clean texts held out from fitting, for the threshold")
    seed: int = Field(0, description="seeds the fit / calibration split and every random draw of the method")
    batch_size: int = Field(128, ge=1, description="texts per forward pass")


@dataclass
class Filtered:
    """What a filter did to a list of texts, in input order. `texts` is what the model reads (rewritten by a
    purifier, else the inputs); `passed` is False for rejected texts; `flagged` marks rejected (detector) or
    rewritten (purifier) texts; `scores` are the suspicion scores the threshold was applied to."""

    texts: list[str]
    passed: np.ndarray
    flagged: np.ndarray
    scores: np.ndarray


class InputFilter(ABC):
    """One input-level defence. `fit` learns from clean texts and sets the threshold; `apply` filters texts.

    Subclasses implement `_fit` (learn from the fitting part of the clean texts) and `score` (suspicion per text,
    higher = more suspicious); a purifier also overrides `apply` to rewrite texts.
    """

    name: ClassVar[str] = ""
    purifier: ClassVar[bool] = False
    config_class: ClassVar[type[FilterConfig]] = FilterConfig

    def __init__(self, victim: Victim, config: FilterConfig | None = None) -> None:
        self.victim = victim
        self.config = config if config is not None else self.config_class()
        self.threshold: float | None = None
        self.details: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ fitting

    def fit(self, clean: TextDataset, *, corpus: Sequence[str] = (), progress: bool | None = False) -> InputFilter:
        """Fit on part of `clean` and set the threshold on the held-out rest (or take `config.threshold`).
        `corpus`: extra unlabelled texts the method may use (ONION: language-model training text; BKI: the
        suspect's training texts, to find keywords in); the others ignore it."""
        if clean.label_names != self.victim.label_names:
            raise DetriggerError(f"clean data labels [{', '.join(clean.label_names)}] differ from the model's "
                                 f"[{', '.join(self.victim.label_names)}]")
        fit_part, calibration = split_clean(clean, self.config.calibration_fraction, self.config.seed)
        start = time.perf_counter()
        self._fit(fit_part, corpus, progress)
        if self.config.threshold is not None:
            self.threshold = float(self.config.threshold)
        else:
            scores = self.calibration_scores(list(calibration.texts), progress)
            self.threshold = threshold_at(scores, self.config.frr)
            self.details["calibration_frr"] = float((scores > self.threshold).mean())
        self.details.update(fit_texts=len(fit_part), calibration_texts=len(calibration),
                            threshold=self.threshold, fit_seconds=round(time.perf_counter() - start, 2))
        log.debug("%s: threshold %.4g", self.name, self.threshold)
        return self

    @abstractmethod
    def _fit(self, clean: TextDataset, corpus: Sequence[str], progress: bool | None) -> None:
        """Learn what the method needs from the clean fitting texts."""

    def calibration_scores(self, texts: list[str], progress: bool | None) -> np.ndarray:
        """Scores of the held-out clean texts that the threshold is set on (a method whose scores depend on
        the whole batch, like BKI's, computes them on this batch alone)."""
        return self.score(texts, progress)

    @abstractmethod
    def score(self, texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
        """Suspicion per text, higher = more suspicious (float array in input order)."""

    # ------------------------------------------------------------------------------------------ filtering

    def apply(self, texts: Sequence[str], progress: bool | None = False) -> Filtered:
        """Reject the texts scored above the threshold (a detector); the rest pass unchanged."""
        if self.threshold is None:
            raise DetriggerError(f"{self.name}: the filter is not fitted (call fit with clean texts first)")
        scores = self.score(list(texts), progress)
        flagged = scores > self.threshold
        return Filtered(list(texts), ~flagged, flagged, scores)


def threshold_at(scores: np.ndarray, frr: float) -> float:
    """The threshold that flags (score > threshold) at most `frr` of `scores`: their (1 - frr) quantile,
    taken at an observed value so that ties never push the rate above `frr`."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        raise DetriggerError("no clean texts to set the threshold on")
    return float(np.quantile(scores, 1.0 - frr, method="higher"))


def split_clean(clean: TextDataset, calibration_fraction: float, seed: int) -> tuple[TextDataset, TextDataset]:
    """A seeded split of the clean texts into a fitting part and a calibration part (both non-empty)."""
    if len(clean) < 4:
        raise DetriggerError(f"{clean.name}: {len(clean)} clean texts; a filter needs at least 4 "
                             "(some to fit on, some to set its threshold on)")
    order = np.random.default_rng(seed).permutation(len(clean))
    n_cal = min(len(clean) - 2, max(2, round(calibration_fraction * len(clean))))
    return (clean.select(sorted(order[n_cal:].tolist()), f"{clean.name}:fit"),
            clean.select(sorted(order[:n_cal].tolist()), f"{clean.name}:calibration"))


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class FilterEntry:
    name: str
    cls: type[InputFilter]
    summary: str


FILTERS: dict[str, FilterEntry] = {}


def register(name: str, summary: str) -> Callable[[type[InputFilter]], type[InputFilter]]:
    """Class decorator: make a filter available by name (to `make_filter`, the CLI and the experiments)."""
    def wrap(cls: type[InputFilter]) -> type[InputFilter]:
        if name in FILTERS:  # a second definition would silently replace the first
            raise ValueError(f"filter {name!r} is registered twice ({FILTERS[name].cls.__module__} and "
                             f"{cls.__module__})")
        cls.name = name
        FILTERS[name] = FilterEntry(name, cls, summary)
        return cls
    return wrap


def options_config(method: str, config: dict[str, Any], options: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """`config` (a config file's) with the options given, `{flag: (field, value)}` (None: not given); an option
    whose field `method`'s config lacks is an error naming the flag, and so is an unknown method or a bad `--frr`."""
    if method not in FILTERS:
        raise DetriggerError(f"unknown filter {method!r} (available: {', '.join(FILTERS)})")
    fields = FILTERS[method].cls.config_class.model_fields
    for flag, (key, value) in options.items():
        if value is not None:
            if key not in fields:
                raise DetriggerError(f"{flag} does not apply to {method}")
            config = {**config, key: value}
    frr = options.get("--frr", (None, None))[1]
    if frr is not None and not 0 <= frr < 1:
        raise DetriggerError(f"--frr must be in [0, 1), got {frr}")
    return config


def make_filter(name: str, victim: Victim, config: FilterConfig | dict[str, Any] | None = None) -> InputFilter:
    """An unfitted filter by name, its config from a dict (unknown keys are errors naming the key)."""
    if name not in FILTERS:
        raise DetriggerError(f"unknown filter {name!r} (available: {', '.join(FILTERS)})")
    cls = FILTERS[name].cls
    if not isinstance(config, FilterConfig):
        try:
            config = cls.config_class(**(config or {}))
        except ValueError as exc:
            raise DetriggerError(f"{name} config: {invalid(exc)}") from None
    elif not isinstance(config, cls.config_class):
        raise DetriggerError(f"{name}: expected a {cls.config_class.__name__}, got a {type(config).__name__}")
    return cls(victim, config)


# ---------------------------------------------------------------------------------------------- evaluation

@dataclass
class FilterMetrics:
    """A filter's figures on one test set; fractions in [0, 1]. Attack figures are None without a trigger.

    - frr: clean test texts flagged (rejected by a detector, rewritten by a purifier) / clean test texts;
    - far: triggered texts not flagged / triggered texts (the non-target test texts with the trigger inserted);
    - cacc: accuracy on the clean test texts the filter passes (as the filter rewrote them);
    - asr: triggered texts that pass *and* are predicted as the target / triggered texts that pass (None when
      none passes);
    - asr_end_to_end: triggered texts that pass and are predicted as the target / all triggered texts (what
      reaches a user: a rejected text is no attack success);
    - victim_cacc / victim_asr: the same model on the same texts without the filter.
    """

    method: str
    threshold: float
    n_clean: int
    cacc: float | None
    frr: float
    victim_cacc: float
    n_poisoned: int = 0
    far: float | None = None
    asr: float | None = None
    asr_end_to_end: float | None = None
    victim_asr: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_filter(flt: InputFilter, test: TextDataset, *, trigger: Trigger | None = None, target: int | None = None,
                    max_triggered: int | None = None,
                    progress: bool | None = False) -> tuple[FilterMetrics, Filtered, Filtered | None]:
    """Run a fitted filter on the clean test texts and, given a trigger and target (evaluation only: read from
    an attack card by the caller), on the triggered non-target test texts (the first `max_triggered` of them, to
    set how much of the stream is triggered); both go through the filter as one stream (BKI's statistics are
    over the stream). Returns the metrics and what the filter did to each part."""
    victim = flt.victim
    if trigger is not None and target is None:
        raise ValueError("a trigger needs a target label")
    start = time.perf_counter()
    triggered = poisoned_test_set(test, trigger, target).triggered if trigger is not None else None
    if triggered is not None and max_triggered is not None:
        triggered = triggered.select(range(min(max_triggered, len(triggered))))
    texts = list(test.texts) + (list(triggered.texts) if triggered is not None else [])
    out = flt.apply(texts, progress)
    n = len(test)
    clean_part = Filtered(out.texts[:n], out.passed[:n], out.flagged[:n], out.scores[:n])
    with progress_bar(2 * len(texts), f"{flt.name} predict", "text", progress) as bar:
        raw = predict(victim, texts, batch_size=flt.config.batch_size, bar=bar)
        filtered = raw if not flt.purifier else predict(victim, out.texts, batch_size=flt.config.batch_size, bar=bar)
    gold = np.asarray(test.labels)
    kept = clean_part.passed
    cacc = accuracy(filtered[:n][kept], gold[kept]) if kept.any() else None  # None: every clean text rejected
    metrics = FilterMetrics(flt.name, float(flt.threshold), n, cacc, float(clean_part.flagged.mean()),
                            accuracy(raw[:n], gold), details=dict(flt.details))
    poisoned_part = None
    if triggered is not None:
        poisoned_part = Filtered(out.texts[n:], out.passed[n:], out.flagged[n:], out.scores[n:])
        hit = filtered[n:] == target
        through = poisoned_part.passed
        metrics.n_poisoned = len(triggered)
        if len(triggered):
            metrics.far = float((~poisoned_part.flagged).mean())
            metrics.asr = float(hit[through].mean()) if through.any() else None  # none passed: no rate
            metrics.asr_end_to_end = float((hit & through).mean())
            metrics.victim_asr = float((raw[n:] == target).mean())
    metrics.seconds = round(time.perf_counter() - start, 2)
    return metrics, clean_part, poisoned_part


def save_filtered(out: Path, record: dict[str, Any], test: TextDataset, clean_part: Filtered,
                  poisoned_part: Filtered | None, target: int | None, label_names: Sequence[str],
                  overwrite: bool = False) -> None:
    """Write `filter.json` (the report) and `texts.jsonl` (every text: its part, label, whether it passed or
    was flagged, its score, as the model read it) into `out`, atomically."""
    with atomic_dir(out, overwrite) as tmp:
        write_json(tmp / "filter.json", record)
        parts = [("clean", test.labels, clean_part)]
        if poisoned_part is not None:
            parts.append(("triggered", [target] * len(poisoned_part.texts), poisoned_part))
        with (tmp / "texts.jsonl").open("w", encoding="utf-8") as f:
            for name, labels, part in parts:
                for i, text in enumerate(part.texts):
                    f.write(json.dumps({"part": name, "text": text, "label": label_names[labels[i]]
                                        if name == "clean" else None, "passed": bool(part.passed[i]),
                                        "flagged": bool(part.flagged[i]), "score": float(part.scores[i])},
                                       ensure_ascii=False) + "\n")


def report_text(flt: InputFilter, m: FilterMetrics, clean_part: Filtered, *, data: str, split: str, clean: str,
                target: str | None, out: Path | None = None) -> str:
    """What a filter did to the clean texts and, with a trigger (`target`: the target label's name), to the
    triggered ones, where it was saved (`out`) and how long it took, as `detrigger filter` prints it."""
    kind, rewritten = ("rewritten", ", as rewritten") if flt.purifier else ("rejected", "")
    at = (f"given ({m.threshold:.4g})" if flt.config.threshold is not None else
          f"{m.threshold:.4g}, set at FRR {100 * flt.config.frr:g}% on {m.details['calibration_texts']} held-out "
          f"clean texts of {clean}")
    lines = [f"{flt.name} on {data} ({split}, {m.n_clean} texts); threshold {at}",
             f"  FRR             {pct(m.frr)}   (clean texts {kind})",
             f"  CACC            {pct(m.cacc)}   (on the {int(clean_part.passed.sum())} clean texts passed{rewritten}; "
             f"without the filter {pct(m.victim_cacc)})"]
    if target is not None:
        lines += [f"  FAR             {pct(m.far)}   (triggered texts not {kind}, of {m.n_poisoned} non-target texts "
                  f"with the trigger; target {target!r})",
                  f"  ASR             {pct(m.asr)}   (triggered texts passed and predicted as the target / passed; "
                  f"without the filter {pct(m.victim_asr)})",
                  f"  ASR end-to-end  {pct(m.asr_end_to_end)}   (passed and predicted as the target / all triggered "
                  "texts)"]
    if "keywords" in m.details:
        lines.append(f"  keywords        {' '.join(m.details['keywords'][:10]) or '-'}")
    if out is not None:
        lines.append(f"saved {out}/ (filter.json, texts.jsonl)")
    return "\n".join([*lines, f"{m.details.get('fit_seconds', 0) + m.seconds:.0f} s"])
