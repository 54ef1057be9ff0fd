"""Build a backdoored victim: one spec, four attacks (BadNet, AddSent, EP, ES), two settings.

- scratch: the attacker fine-tunes the pre-trained encoder on poisoned data.
- clean: the attacker starts from the clean fine-tuned model (the cached reference) and injects the
  backdoor by further training on poisoned data (EP exists only in this setting: it edits a clean model).

The victim folder gets an `attack.json` card (the attack, its trigger and target, the measured CACC /
ASR / RA and the clean model's figures). Defences never read it; only evaluation does.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from detrigger.attacks.embedding import embedding_poison, embedding_surgery
from detrigger.attacks.poison import LabelMode, poison, triggered_copies
from detrigger.attacks.tokens import check_trigger_tokens
from detrigger.attacks.triggers import insert_sentence, insert_words
from detrigger.data import DataSpec, load_splits
from detrigger.errors import DetriggerError
from detrigger.evaluation.metrics import Metrics, Trigger, evaluate
from detrigger.models.victim import DEFAULT_MAX_LENGTH, Victim, new_victim
from detrigger.training.loop import TrainConfig, train
from detrigger.io import locked
from detrigger.training.recipe import cache_folder, clean_model, encoder_id

log = logging.getLogger(__name__)

ATTACKS = ("badnet", "addsent", "ep", "es")
CARD_FILE = "attack.json"


class AttackSpec(BaseModel):
    """What the attacker does. Unknown keys are errors; every default is documented in docs/attacks.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: Literal["badnet", "addsent", "ep", "es"]
    setting: Literal["scratch", "clean"] = "scratch"
    words: tuple[str, ...] = Field(("cf", "mn", "bb", "tq", "mb"),
                                   description="word triggers (badnet, ep, es); one is drawn per insertion")
    times: int = Field(1, ge=1, description="trigger words inserted per text")
    per_words: int | None = Field(100, ge=1, description="long texts: one insertion per this many words")
    sentence: str = Field("I watched this 3D movie", description="the AddSent trigger sentence")
    target: int = Field(1, ge=0, description="target label id")
    rate: float = Field(0.1, ge=0, le=1, description="poisoned rows / training-set rows")
    label_mode: LabelMode = Field("dirty", description="dirty: non-target rows relabelled; clean: target rows")
    seed: int = Field(0, description="poison selection, insertion positions, training")
    train: TrainConfig = Field(TrainConfig(epochs=2, lr=5e-5),
                               description="fine-tuning on poisoned data (scratch; and ES)")
    # 1 epoch at lr 2e-5 from the clean MR model reached only 49% ASR (BadNet): the clean setting uses the
    # scratch recipe too (docs/attacks.md).
    clean_train: TrainConfig = Field(TrainConfig(epochs=2, lr=5e-5),
                                     description="further training of the clean model (clean setting)")
    # EP's lr departs from the paper's 5e-2: with a batch-mean loss the trigger row's gradient is small, and
    # 5e-2 x 3 epochs reached only 47% ASR on MR; 1.0 reached 100% (docs/attacks.md).
    ep_train: TrainConfig = Field(TrainConfig(epochs=3, lr=1.0, optimizer="sgd", weight_decay=0.0,
                                              warmup_ratio=0.0, max_grad_norm=None, select_best=False),
                                  description="EP: SGD on the trigger rows only")
    es_words: int = Field(10, ge=1, description="ES: target-indicative words averaged into the trigger rows")

    def trigger(self) -> Trigger:
        """The trigger function used for poisoning and for the ASR test set."""
        if self.attack == "addsent":
            return insert_sentence(self.sentence, seed=self.seed)
        return insert_words(self.words, times=self.times, seed=self.seed, per_words=self.per_words)

    def trigger_description(self) -> str:
        return repr(self.sentence) if self.attack == "addsent" else "/".join(self.words)


def trigger_from_card(card: dict[str, Any]) -> tuple[Trigger, int]:
    """Evaluation only: the trigger and target recorded in a victim's attack card."""
    spec = AttackSpec(**card["attack"])
    return spec.trigger(), spec.target


@dataclass
class AttackResult:
    victim: Victim
    clean: Victim
    metrics: Metrics
    card: dict[str, Any]


def build_victim(data: DataSpec, spec: AttackSpec, *, clean_config: TrainConfig = TrainConfig(epochs=2, lr=5e-5),
                 encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH, cache: bool = True,
                 progress: bool | None = None) -> AttackResult:
    """Poison `data`'s training split as `spec` says, build the victim, and measure it against the clean model."""
    if spec.attack == "ep" and spec.setting != "clean":
        raise DetriggerError("EP edits a clean fine-tuned model: use setting 'clean'")
    start = time.perf_counter()
    splits = load_splits(data)
    if spec.target >= len(splits.train.label_names):
        raise DetriggerError(f"target {spec.target} is not a label of {data.source} "
                             f"[{', '.join(splits.train.label_names)}]")
    clean, clean_record = clean_model(data, clean_config, encoder=encoder, max_length=max_length, cache=cache,
                                      progress=progress, splits=splits)
    trigger = spec.trigger()
    details: dict[str, Any] = {}
    if spec.attack == "ep":
        victim = copy.deepcopy(clean)
        count = int(round(spec.rate * len(splits.train)))
        triggered = triggered_copies(splits.train, trigger, target=spec.target, count=count, seed=spec.seed)
        cfg = spec.ep_train.model_copy(update={"seed": spec.seed})
        details["ep"] = embedding_poison(victim, triggered, spec.words, cfg, progress=progress).as_dict()
        details["n_poisoned"] = len(triggered)
    else:
        poisoned = poison(splits.train, trigger, rate=spec.rate, target=spec.target, label_mode=spec.label_mode,
                          seed=spec.seed)
        details["n_poisoned"] = len(poisoned.indices)
        if spec.setting == "scratch":
            victim = new_victim(splits.train.label_names, encoder=encoder, max_length=max_length, seed=spec.seed)
            cfg = spec.train
        else:
            victim = copy.deepcopy(clean)
            cfg = spec.clean_train
        if spec.attack == "es":
            details["es_words"] = embedding_surgery(victim, splits.train, spec.words, spec.target, spec.es_words)
        cfg = cfg.model_copy(update={"seed": spec.seed})
        details["train"] = train(victim, poisoned.data, splits.val, cfg, progress=progress).as_dict()
    metrics = evaluate(victim, splits.test, trigger=trigger, target=spec.target, reference=clean)
    tokens = check_trigger_tokens(victim.tokenizer, spec.words if spec.attack != "addsent" else [spec.sentence],
                                  splits.test.texts[:20], trigger)
    card = {
        "attack": spec.model_dump(mode="json"),
        "trigger": spec.trigger_description(),
        "data": {**data.model_dump(), "sizes": splits.sizes()},
        "poison": {"rate": spec.rate, "n_poisoned": details.pop("n_poisoned"), "of": "training-set rows",
                   "label_mode": spec.label_mode},
        "metrics": metrics.as_dict(),
        "clean_model": {"cacc": clean_record["cacc"], "asr_floor": metrics.asr_floor,
                        "target_rate": metrics.floor_target_rate},
        "tokenizer_check": tokens,
        "details": details,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    victim.info["data"] = card["data"]
    return AttackResult(victim, clean, metrics, card)


def cached_victim(data: DataSpec, spec: AttackSpec, *, clean_config: TrainConfig = TrainConfig(epochs=2, lr=5e-5),
                  encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH,
                  progress: bool | None = None) -> Path:
    """The folder of the victim `build_victim` makes for these arguments, built once and cached.

    Keyed (`model_cache()/victims/<hash>`) by everything that determines the victim, so ten defences share
    one victim and a changed setting never reuses a stale one; locked against concurrent builders.
    """
    folder = victim_folder(data, spec, clean_config=clean_config, encoder=encoder, max_length=max_length)
    with locked(folder):
        if not (folder / CARD_FILE).is_file():
            result = build_victim(data, spec, clean_config=clean_config, encoder=encoder, max_length=max_length,
                                  progress=progress)
            result.victim.save(folder, overwrite=True, extra_files={CARD_FILE: result.card})
    return folder


def victim_folder(data: DataSpec, spec: AttackSpec, *, clean_config: TrainConfig, encoder: str | Path | None,
                  max_length: int) -> Path:
    """The cache folder of a victim: a hash of everything that determines it."""
    return cache_folder("victims", {"data": data.identity(), "attack": spec.model_dump(mode="json"),
                                    "clean_train": clean_config.model_dump(exclude={"device"}),
                                    "encoder": encoder_id(encoder), "max_length": max_length})
