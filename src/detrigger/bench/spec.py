"""The experiment spec: a YAML file naming data sets, attacks, defences, clean fractions and seeds.

Every section is typed and unknown keys are errors, reported as one line naming the file and the key
(`spec.yaml: attacks.0.rate: ...`). The grid is the product data x attacks x seeds x (clean model,
no defence, defences x clean fractions); `cells()` expands it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detrigger.argfields import POSITIONAL
from detrigger.attacks.attack import AttackSpec
from detrigger.data import DataSpec, check_source
from detrigger.errors import DetriggerError, invalid
from detrigger.models.victim import DEFAULT_MAX_LENGTH
from detrigger.training.loop import TrainConfig

BASELINES = ("clean model", "no defence")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttackEntry(_Strict):
    """An attack of the grid: a name for the tables and AttackSpec fields (the seed comes from `seeds`)."""

    name: str | None = None
    spec: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        # YAML writes an attack as one flat mapping: {name: badnet-scratch, attack: badnet, setting: scratch}
        if isinstance(value, dict) and "spec" not in value:
            value = dict(value)
            return {"name": value.pop("name", None), "spec": value}
        return value

    @field_validator("spec")
    @classmethod
    def _valid(cls, spec: dict[str, Any]) -> dict[str, Any]:
        if "seed" in spec:
            raise ValueError("set seeds at the top level (`seeds:`), not per attack")
        AttackSpec(**spec)
        return spec

    def label(self) -> str:
        return self.name or f"{self.spec['attack']}-{AttackSpec(**self.spec).setting}"

    def at_seed(self, seed: int) -> AttackSpec:
        return AttackSpec(**self.spec, seed=seed)


class DefenceEntry(_Strict):
    """A defence of the grid: a table name, a `repair` method (or pipeline) and its config."""

    name: str | None = None
    method: str
    config: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] | None = Field(None, min_length=1, description="run at these of the spec's seeds only "
                                    "(an expensive ablation on fewer repetitions; default: every seed)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _valid(self) -> DefenceEntry:
        from detrigger.defences import step_configs

        if self.name in BASELINES:
            raise ValueError(f"{self.name!r} is a baseline row every grid has; choose another name")
        try:
            step_configs(self.method, self.config)
        except DetriggerError as exc:  # unknown method or config key: let pydantic name the entry
            raise ValueError(str(exc)) from None
        return self

    def label(self) -> str:
        return self.name or self.method

    def at_seed(self, seed: int) -> dict[str, Any]:
        """The config with the cell's seed filled in (per step for a pipeline) unless the spec set one."""
        steps = self.method.split("+")
        if len(steps) == 1:
            return {"seed": seed, **self.config}
        return {step: {"seed": seed, **self.config.get(step, {})} for step in steps}


class BenchSpec(_Strict):
    name: str = Field("bench", description="shown above the tables")
    data: list[DataSpec] = Field(min_length=1, description="data sets (DataSpec fields; the seed comes from `seeds`)")
    attacks: list[AttackEntry] = Field(min_length=1)
    defences: list[DefenceEntry] = Field(default_factory=list)
    clean_fractions: list[float] = Field([0.2], min_length=1, description="defender's share of the training split")
    seeds: list[int] = Field([0], min_length=1, description="one seed per repetition: split, poison, training, masks")
    encoder: str | None = Field(None, description="pre-trained encoder folder (default: the embedded MiniLM-L6)")
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=8)
    clean_train: TrainConfig = Field(TrainConfig(epochs=2, lr=5e-5), description="the clean reference model's recipe")

    @model_validator(mode="before")
    @classmethod
    def _data_names(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("data"), list):
            value = {**value, "data": [{"source": d} if isinstance(d, str) else d for d in value["data"]]}
        return value

    @field_validator("data")
    @classmethod
    def _no_data_seed(cls, data: list[DataSpec]) -> list[DataSpec]:
        if any(d.seed != 0 for d in data):
            raise ValueError("set seeds at the top level (`seeds:`), not per data set")
        return data

    @model_validator(mode="after")
    def _defence_seeds(self) -> BenchSpec:
        for i, d in enumerate(self.defences):
            if d.seeds and not set(d.seeds) <= set(self.seeds):
                raise ValueError(f"defences.{i}.seeds: {d.seeds} are not all among the spec's seeds {self.seeds}")
        return self

    @field_validator("clean_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError("clean fractions must be in (0, 1]")
        return fractions

    def cells(self) -> list[Cell]:
        out = []  # seed-major: a run cut short has every attack at the first seeds
        for seed in self.seeds:
            for data in self.data:
                for attack in self.attacks:
                    common = dict(data=data.model_copy(update={"seed": seed}), attack=attack.label(),
                                  attack_spec=attack.at_seed(seed), seed=seed)
                    out += [Cell(**common, defence=name, method=None, config={}, clean_fraction=None)
                            for name in BASELINES]
                    out += [Cell(**common, defence=d.label(), method=d.method, config=d.at_seed(seed),
                                 clean_fraction=f) for d in self.defences for f in self.clean_fractions
                            if d.seeds is None or seed in d.seeds]
        return out


class RunOptions(_Strict):
    """What `detrigger bench` is given: the spec, the run folder, and how `run_bench` runs the grid now: where, and
    which part of it."""

    spec: str = Field(description="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds",
                      json_schema_extra=POSITIONAL)
    out: str = Field(description="run folder: one record per cell, results.md/csv/json, plots/")

    executor: Literal["local", "ray"] = Field("local", description="local: cells in order in this process; ray: a "
                                              "Ray task per cell")
    address: str | None = Field(None, description="Ray cluster address (e.g. auto; default: start a local one)")
    retry_failed: bool = Field(False, description="rerun the cells recorded as failed")
    seeds: tuple[int, ...] | None = Field(None, description="run only these seeds now (default: all)")
    attacks: tuple[str, ...] | None = Field(None, description="run only these attacks (spec names) now (default: all)")


@dataclass(frozen=True)
class Cell:
    """One row of the grid: evaluate one model (clean, victim, or a repair of the victim)."""

    data: DataSpec
    attack: str
    attack_spec: AttackSpec
    seed: int
    defence: str
    method: str | None
    config: dict[str, Any]
    clean_fraction: float | None

    def identity(self) -> dict[str, Any]:
        """Everything that determines the cell's result (with the spec's model settings: see `cell_key`),
        the defence config resolved with its defaults, so a changed default is a new cell."""
        from detrigger.defences import step_configs

        resolved = [key_dump(c) for c in step_configs(self.method, self.config)] if self.method else None
        return {"data": self.data.identity(), "attack": self.attack_spec.model_dump(mode="json"),
                "defence": self.defence if self.method is None else None, "method": self.method,
                "config": resolved, "clean_fraction": self.clean_fraction}


def key_dump(config: BaseModel) -> dict[str, Any]:
    """A config as a cell's key sees it: its JSON dump, nested configs too, without a field added later that is at
    its neutral value (`json_schema_extra={"neutral": value}`: the value that does what the code did before the
    field existed). Records made before such a field stay the cells they were, and any other value, the
    default included, is a new cell."""
    dump = config.model_dump(mode="json")
    for name, info in type(config).model_fields.items():
        value, extra = getattr(config, name), info.json_schema_extra
        if isinstance(value, BaseModel):
            dump[name] = key_dump(value)
        elif isinstance(extra, dict) and "neutral" in extra and value == extra["neutral"]:
            del dump[name]
    return dump


def load_spec(path: str | Path) -> BenchSpec:
    """Read and validate a spec file; any problem is one DetriggerError naming the file and key or line."""
    path = Path(path)
    if not path.is_file():
        raise DetriggerError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise DetriggerError(f"{path}: {where}: invalid YAML ({exc.problem})") from None
    if not isinstance(raw, dict):
        raise DetriggerError(f"{path}: a spec is a mapping with data, attacks, defences, seeds...")
    try:
        spec = BenchSpec(**raw)
    except ValidationError as exc:
        raise DetriggerError(f"{path}: {invalid(exc, hidden=('spec',))}") from None
    for i, data in enumerate(spec.data):  # now, not when every cell of the grid fails
        try:
            check_source(data)
        except DetriggerError as exc:
            raise DetriggerError(f"{path}: data.{i}.source: {exc}") from None
    return spec
