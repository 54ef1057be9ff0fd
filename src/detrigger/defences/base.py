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
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from detrigger.argfields import POSITIONAL
from detrigger.cost import measure
from detrigger.data import clean_subset
from detrigger.data.dataset import Splits, TextDataset, split
from detrigger.errors import DetriggerError, invalid
from detrigger.io import read_config
from detrigger.models.predict import accuracy_on
from detrigger.models.victim import REPAIR_FILE, Victim, default_encoder_path
from detrigger.progress import pct
from detrigger.training.loop import TrainConfig

log = logging.getLogger(__name__)


class DefenceConfig(BaseModel):
    """Settings every defence shares; each defence extends it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainConfig = Field(TrainConfig(epochs=3, lr=5e-5), description="fine-tuning on the clean subset")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="part of the clean subset held out for selection")
    seed: int = Field(0, description="seeds the held-out split, masks and training")


class StepFacts(BaseModel):
    """The facts of one repair step that a bench record keeps and its tables and plots read (not whole training
    histories). A fact the step did not produce is unset and stays out of the dump."""

    model_config = ConfigDict(extra="forbid")

    rho: float | None = Field(None, description="mixing: the kept fraction of the fine-tuned change")
    ratio: float | None = Field(None, description="fine-pruning: the pruned fraction chosen")
    val_accuracy: float | None = Field(None, description="the repaired model's held-out clean accuracy")
    suspect_val_accuracy: float | None = Field(None, description="the suspect's held-out clean accuracy")
    curve: list[dict[str, float]] | None = Field(None, description="held-out accuracy per rho or pruning ratio tried")
    teacher_val_accuracy: float | None = Field(None, description="distillation: the teacher's held-out accuracy")
    teacher_split_val_accuracy: float | None = Field(None, description="MBTSAD: the teacher's, on split text")
    stages: dict[str, float] | None = Field(None, description="wall seconds per stage, by `<stage>_seconds`")
    reset_rows: int | None = Field(None, description="E-PUR: embedding rows reset")
    flagged: list[str] | None = Field(None, description="E-PUR: the first ten flagged tokens")
    scan_before: dict[str, Any] | None = Field(None, description="auto: the scan of the suspect")
    scan_after: dict[str, Any] | None = Field(None, description="auto: the last re-scan")
    rounds: list[dict[str, Any]] | None = Field(None, description="auto: each unlearning round")
    unlearned: list[dict[str, str]] | None = Field(None, description="auto: the tokens unlearned")
    set_aside: list[dict[str, str]] | None = Field(None, description="auto: the candidates not unlearned, and why")
    reset_first: dict[str, Any] | None = Field(None, description="auto: the reset-first check that did not end it")
    decision: str | None = Field(None, description="auto: what it did, in words")
    warning: str | None = Field(None, description="auto: what its verdicts cannot see (no reference fits the model)")


class StepDetails(BaseModel):
    """What one step of a repair did; each defence returns its own subclass. Facts a step did not produce are
    unset and stay out of `as_dict()` (repair.json); `facts()` is what a bench record keeps, `summary()` what
    `detrigger repair` prints."""

    model_config = ConfigDict(extra="forbid")

    shown: ClassVar[tuple[str, ...]] = ()  # the facts `summary()` prints, in order

    stages: dict[str, float] | None = Field(None, description="wall seconds per stage, by `<stage>_seconds`")
    train: dict[str, Any] | None = Field(None, description="the last training run (`TrainResult.as_dict()`)")
    purified_val_accuracy: float | None = Field(
        None, description="held-out clean accuracy through the input purifier the step built, if any")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)

    def facts(self) -> StepFacts:
        """The facts a bench record keeps: the step's fields that `StepFacts` declares."""
        kept = set(StepFacts.model_fields) & self.model_fields_set
        return StepFacts(**{k: getattr(self, k) for k in kept})

    def summary(self) -> dict[str, Any]:
        """The step's headline facts, in `shown` order, and the best held-out accuracy of its training."""
        out = {k: getattr(self, k) for k in self.shown if k in self.model_fields_set}
        if self.train is not None:
            out["best_val_accuracy"] = self.train["best_val_accuracy"]
        return out


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
    details: dict[str, StepDetails] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"},
                "details": {step: d.as_dict() for step, d in self.details.items()}}

    def text(self) -> str:
        """Each step's headline facts and the held-out accuracies, as `detrigger repair` prints them."""
        lines = [f"  {step}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in d.summary().items()) for step, d in self.details.items()]
        purified = "" if self.accuracy_with_purifier is None else \
            f", {pct(self.accuracy_with_purifier)} with the input purifier"
        return "\n".join(lines + [
            f"held-out clean accuracy ({self.heldout_count} texts of the clean subset not trained on): suspect "
            f"{pct(self.accuracy_before)}, repaired {pct(self.accuracy_after)} (weights alone){purified}"])


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
        victim.save(out, overwrite=overwrite, extra_files={REPAIR_FILE: record, "README.md": render_card(record)})
        return record

    def saved_text(self, record: dict[str, Any], out: str | Path) -> str:
        """What `detrigger repair` prints once `save` wrote `out` and returned `record`: the report, a warning
        about what the folder holds if there is one, the files and the cost."""
        note, files = record["saved"]["note"], ", ".join(sorted(p.name for p in Path(out).iterdir()))
        return (self.report.text() + (f"\nwarning: {note}" if note else "") + f"\nsaved {out}/ ({files}) in "
                f"{self.report.seconds:.0f} s, peak memory {self.report.peak_memory_mb:.0f} MB")


@dataclass(frozen=True)
class Context:
    """What a defence may use: the clean subset split into train/validation, and the reference encoder."""

    clean: Splits
    reference: Path | None


# A defence: (suspect victim copy, context, config) -> (repaired victim, what it did)
DefenceFn = Callable[[Victim, Context, Any], tuple[Victim, StepDetails]]


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
    folder (default: a LoRA suspect's base, else the embedded MiniLM) for the methods that use one.
    `clean_fraction` (what share of the task's training data `clean` is) is only recorded.
    """
    steps = method.split("+")
    configs = step_configs(method, config)
    victim.check_labels(clean.label_names, "clean data")
    needs_ref = any(DEFENCES[m].needs_reference for m in steps)
    reference = reference or victim.info.get("adapter", {}).get("base")  # a LoRA suspect's base is its w_P
    ref = Path(reference) if reference else (default_encoder_path() if needs_ref else None)
    first = configs[0]
    context = Context(clean_splits(clean, first.val_fraction, first.seed), ref)
    report = RepairReport(method, {m: c.model_dump(mode="json") for m, c in zip(steps, configs)}, len(clean),
                          clean_fraction)
    val = context.clean.val
    report.heldout_count = len(val)
    report.accuracy_before = accuracy_on(victim, val)
    repaired = copy.deepcopy(victim)
    with measure(victim.device) as cost:
        for name, cfg in zip(steps, configs):
            repaired, details = DEFENCES[name].fn(repaired, context, cfg)
            report.details[name] = details
    report.seconds, report.peak_memory_mb = round(cost.seconds, 2), round(cost.peak_memory_mb, 1)
    report.accuracy_after = accuracy_on(dataclasses.replace(repaired, purifier=None), val)
    if repaired.purifier is not None:  # the last step's own measure if it built the purifier (see RepairReport)
        own = report.details[steps[-1]].purified_val_accuracy
        report.accuracy_with_purifier = own if own is not None else accuracy_on(repaired, val)
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


def options_config(method: str, given: dict[str, Any], options: dict[str, Any],
                   train: dict[str, Any]) -> dict[str, Any]:
    """Config dicts of `method`'s steps (keyed by step for a pipeline) from `given` (a config file's, for one
    step or keyed by step), each of the option `options` the step's config has, and `train` overrides."""
    steps = method.split("+")
    if len(steps) == 1 and steps[0] not in given:
        given = {steps[0]: given}
    config = {}
    for step in steps:
        if step not in DEFENCES:
            continue  # step_configs names the unknown defence
        fields = DEFENCES[step].config.model_fields
        cfg = {**given.get(step, {}), **{k: v for k, v in options.items() if v is not None and k in fields}}
        if train:
            cfg["train"] = {**cfg.get("train", {}), **train}
        config[step] = cfg
    return config if len(steps) > 1 else config.get(steps[0], {})


class CleanOptions(BaseModel):
    """The defender's clean data (`defender_clean`): a source, and how much of its pool to use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clean: str = Field(description="clean data: a built-in corpus (its training split) or a file")
    clean_fraction: float | None = Field(None, description="share of the clean data to use (default: all of it)")
    clean_count: int | None = Field(None, description="number of clean texts to use")


def defender_clean(options: CleanOptions, victim: Victim, **data_options: Any) -> tuple[TextDataset, int]:
    """The defender's clean subset and the size of the pool it is drawn from: a built-in corpus's training
    split as the victim was built from it (never its test split), else all of the data; all of the pool, a
    fraction or a count of it, drawn with the data options' `seed` (default 0)."""
    fraction, count = options.clean_fraction, options.clean_count
    if fraction is not None and count is not None:
        raise DetriggerError("give one of --clean-fraction and --clean-count, not both")
    pool = victim.texts(options.clean, default="train", **data_options)
    whole = fraction is None and count is None
    subset = clean_subset(pool, fraction=1.0 if whole else fraction, count=count, seed=data_options.get("seed") or 0)
    return subset, len(pool)


class RepairOptions(CleanOptions):
    """What `detrigger repair` is given besides the suspect and the steps' config fields."""

    victim: str = Field(description="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder",
                        json_schema_extra=POSITIONAL)
    method: str = Field("auto", description="a registered defence, or a pipeline joined by + (epur+finemixing)")
    reference: str | None = Field(None, description="the suspect's pre-trained base model folder or hub id, same "
                                  "family and vocabulary (default: a LoRA adapter's base, else the embedded MiniLM-L6)")
    out: str = Field(description="output folder (model, repair.json, README.md model card)")
    config: str | None = Field(None, description="JSON file with the defence config (keyed by step for pipelines)")
    ship_purifier: bool = Field(False, description="save an input purifier (MBTSAD's; it lists your clean-data "
                                "vocabulary) with the model: the folder then behaves as repaired only through "
                                "detrigger (default: the weights alone; repair.json and README.md say what they "
                                "measure)")

    def step_config(self, options: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
        """The config file's step configs with `options` and `train` overrides (`options_config`)."""
        return options_config(self.method, read_config(self.config), options, train)

    def run(self, victim: Victim, config: dict[str, Any], *, overwrite: bool = False,
            say: Callable[[str], Any] | None = None, **data_options: Any) -> tuple[dict[str, Any], str]:
        """`detrigger repair`: the defender's clean subset (`defender_clean`; `say` is told its size before the
        work starts), the repair with the step configs `config`, the folder saved. Returns the record and the text
        the command prints."""
        clean, pool = defender_clean(self, victim, **data_options)
        if say:
            say(self.clean_text(clean, pool, victim))
        result = repair(victim, clean, method=self.method, reference=self.reference, config=config,
                        clean_fraction=len(clean) / pool)
        record = result.save(Path(self.out), suspect=str(Path(self.victim).resolve()), clean_data=self.clean,
                             ship_purifier=self.ship_purifier, overwrite=overwrite)
        return record, result.saved_text(record, Path(self.out))

    def clean_text(self, clean: TextDataset, pool: int, victim: Victim) -> str:
        """What `detrigger repair` says before it starts: the clean subset's size and share, and that a LoRA
        suspect is repaired merged."""
        lines = [f"{self.method}: {len(clean)} clean texts ({100 * len(clean) / pool:.1f}% of {pool} in {self.clean})"]
        if "adapter" in victim.info:
            lines.append(f"LoRA adapter merged into its base {victim.info['adapter']['base']} (also the reference "
                         "unless --reference); the repaired model is saved merged, as a plain model folder")
        return "\n".join(lines)
