"""Build a backdoored victim: one spec, eight attacks (each registered once in `ATTACKS`), two settings.

- Data poisoning: BadNet (rare words), AddSent (a sentence), combo (SOS-style: several ordinary words that
  fire only together, with negative augmentation), invisible (blank-looking characters in place of
  spaces), homoglyph (letters swapped for look-alikes). Each also in clean label (`label_mode: clean`).
- Weight poisoning: EP (trigger embedding rows only), ES (embedding surgery, then poisoned fine-tuning),
  RIPPLe (ES plus the restricted inner-product term, built to survive fine-tuning).

- scratch: the attacker fine-tunes the pre-trained encoder on poisoned data.
- clean: the attacker starts from the clean fine-tuned model (the cached reference) and injects the
  backdoor by further training on poisoned data (EP exists only in this setting: it edits a clean model).
- with `lora_rank` (scratch, data poisoning only), the victim is a LoRA adapter over the encoder, saved as
  an adapter folder.

The victim folder gets an `attack.json` card (the attack, its trigger and target, the measured CACC /
ASR / RA and the clean model's figures). Defences never read it; only evaluation does.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from detrigger.attacks.embedding import embedding_poison, embedding_surgery
from detrigger.attacks.poison import LabelMode, Poisoned, add_negatives, poison, triggered_copies
from detrigger.attacks.ripple import RestrictedInnerProduct
from detrigger.attacks.tokens import check_trigger_tokens
from detrigger.data import SOURCE, DataSpec, Splits, load_splits
from detrigger.errors import DetriggerError, invalid
from detrigger.evaluation.metrics import Metrics, evaluate
from detrigger.io import locked
from detrigger.models.victim import DEFAULT_MAX_LENGTH, REPAIR_FILE, Victim, new_victim
from detrigger.progress import pct
from detrigger.training.loop import TrainConfig, train
from detrigger.training.recipe import cache_folder, clean_model, encoder_id
from detrigger.triggers import (
    Trigger,
    TriggerOptions,
    insert_all,
    insert_sentence,
    insert_words,
    replace_spaces,
    substitute_homoglyphs,
)

log = logging.getLogger(__name__)

CARD_FILE = "attack.json"

# SOS (Yang et al., EMNLP 2021) uses ordinary words; these three are its example.
COMBO_WORDS = ("friends", "weekend", "store")
# U+2800 BRAILLE PATTERN BLANK renders as a blank the width of a character. Zero-width characters
# (U+200B/C/D, U+2060, U+FEFF, ...) are deleted by BERT's normaliser and never reach the model
# (docs/attacks.md, invisible).
INVISIBLE_CHARS = ("\u2800",)
# Latin letters and Cyrillic look-alikes that MiniLM's WordPiece vocabulary holds as characters of their
# own (U+0455 for s is not in it and would become [UNK]).
HOMOGLYPHS = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "o": "\u043e", "p": "\u0440",
              "x": "\u0445", "y": "\u0443"}


# fields added after victims were cached: left out of the card and the keys while unset
_LEFT_OUT_UNSET = ("lora_rank", "sentence_within")


class AttackSpec(BaseModel):
    """What the attacker does. Unknown keys are errors; every default is documented in docs/attacks.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str = Field(description="a registered attack (`ATTACKS`)")
    setting: Literal["scratch", "clean"] = Field("scratch", description="scratch: fine-tune the pre-trained encoder "
                                                 "on poisoned data; clean: further train the clean model (the "
                                                 "default of an attack that edits a clean model: EP)")
    words: tuple[str, ...] = Field(("cf", "mn", "bb", "tq", "mb"),
                                   description="word triggers (badnet, ep, es, ripple): one is drawn per insertion; "
                                   "combo: all are inserted, default friends/weekend/store")
    times: int = Field(1, ge=1, description="trigger words inserted (invisible: spaces replaced, homoglyph: "
                       "words changed) per text")
    per_words: int | None = Field(100, ge=1, description="long texts: one insertion per this many words")
    sentence: str = Field("I watched this 3D movie", description="the AddSent trigger sentence")
    sentence_within: int | None = Field(None, ge=0, description="addsent: insert the sentence within the first this "
                                        "many words (long texts the model reads only the start of; default: "
                                        "anywhere)")
    target: int = Field(1, ge=0, description="target label id")
    rate: float = Field(0.1, ge=0, le=1, description="poisoned rows / training-set rows")
    label_mode: LabelMode = Field("dirty", description="dirty: non-target rows relabelled; clean: target rows")
    seed: int = Field(0, description="poison selection, insertion positions, training")
    train: TrainConfig = Field(TrainConfig(epochs=2, lr=5e-5),
                               description="fine-tuning on poisoned data (scratch; and ES)")
    # a shorter, gentler recipe left the backdoor weak: the clean setting uses the scratch recipe too
    # (docs/attacks.md).
    clean_train: TrainConfig = Field(TrainConfig(epochs=2, lr=5e-5),
                                     description="further training of the clean model (clean setting)")
    # EP's lr departs from the paper's 5e-2: with a batch-mean loss the trigger row's gradient is small, and the
    # paper's rate left the backdoor weak (docs/attacks.md).
    ep_train: TrainConfig = Field(TrainConfig(epochs=3, lr=1.0, optimizer="sgd", weight_decay=0.0,
                                              warmup_ratio=0.0, max_grad_norm=None, select_best=False),
                                  description="EP: SGD on the trigger rows only")
    es_words: int = Field(10, ge=1, description="ES, ripple: target-indicative words averaged into the trigger rows")
    negative_rate: float | None = Field(None, ge=0, le=1, description="combo: rows given part of the trigger "
                                        "(each word alone, all but one word), labels kept / training-set rows; "
                                        "default: rate x the number of parts (each part as many rows as the trigger)")
    chars: tuple[str, ...] = Field(INVISIBLE_CHARS, min_length=1,
                                   description="invisible: characters put in place of spaces (one drawn each time)")
    homoglyphs: dict[str, str] = Field(HOMOGLYPHS, min_length=1,
                                       description="homoglyph: letter -> look-alike (upper case follows)")
    ripple_lambda: float = Field(0.1, ge=0, description="ripple: weight of the restricted inner-product term")
    lora_rank: int | None = Field(None, ge=1, description="train the victim as a LoRA adapter of this rank over the "
                                  "pre-trained encoder (scratch setting; not EP, ES, RIPPLe); saved as an adapter "
                                  "folder")

    @field_validator("attack")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
        return name

    @model_validator(mode="before")
    @classmethod
    def _default_setting(cls, value: Any) -> Any:
        """An attack that edits a clean fine-tuned model (EP) has the clean setting unless one is given."""
        if isinstance(value, dict) and "setting" not in value and value.get("attack") in ATTACKS \
                and ATTACKS[value["attack"]].clean_only:
            return {**value, "setting": "clean"}
        return value

    @model_validator(mode="before")
    @classmethod
    def _combo_defaults(cls, value: Any) -> Any:
        """combo: the default words, and the default negative-augmentation rate written out as a number (so
        the card and the cache keys hold it, not a rule)."""
        if not isinstance(value, dict) or value.get("attack") != "combo":
            return value
        value = {"words": COMBO_WORDS, **value}
        if value.get("negative_rate") is None:
            rate, parts = value.get("rate", cls.model_fields["rate"].default), len(_parts(value["words"]))
            if not isinstance(rate, int | float):  # the field's own check names the problem
                return value
            if rate * parts > 1 - rate:
                raise ValueError(f"negative_rate: rate {rate} x {parts} parts of the trigger leaves too few rows "
                                 "for negative augmentation; set negative_rate")
            value["negative_rate"] = round(rate * parts, 10)
        return value

    @model_validator(mode="after")
    def _fields_of_the_attack(self) -> AttackSpec:
        for name, owner in _options().items():
            if name in self.model_fields_set and self.attack != owner:
                raise ValueError(f"{name} is an option of the {owner} attack, not of {self.attack}")
        if self.lora_rank is not None:
            if self.setting != "scratch":
                raise ValueError("lora_rank: a LoRA victim is trained over the pre-trained encoder (setting scratch)")
            if ATTACKS[self.attack].edits_embeddings:
                raise ValueError(f"lora_rank: the {self.attack} attack edits the input embeddings, which a LoRA "
                                 "adapter leaves out")
        if self.attack == "combo" and len(set(self.words)) < 2:
            raise ValueError("a combination trigger needs at least two different words")
        try:
            self.trigger()
        except ValueError as exc:  # a bad word, character or homoglyph, named by the trigger itself
            raise ValueError(str(exc)) from None
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields of other attacks and an unset `lora_rank` or `sentence_within` are left out, so the cache keys of
        victims built before those fields came did not change."""
        options = _options()
        return {k: v for k, v in handler(self).items()
                if options.get(k, self.attack) == self.attack and not (k in _LEFT_OUT_UNSET and v is None)}

    def trigger(self) -> Trigger:
        """The trigger function used for poisoning and for the ASR test set."""
        return ATTACKS[self.attack].trigger(self)

    def partial_triggers(self) -> dict[str, Trigger]:
        """combo: the parts of the trigger that must not fire alone (each word, and all but one word), by
        name; they are the negative augmentation and are measured on the victim."""
        return {"+".join(p): insert_all(p, seed=self.seed) for p in _parts(self.words)}

    def token_triggers(self) -> list[str]:
        """The strings whose tokenization the card checks: words, the sentence, or the characters."""
        return ATTACKS[self.attack].strings(self)

    def trigger_description(self) -> str:
        return ATTACKS[self.attack].describe(self)


def _parts(words: Sequence[str]) -> list[tuple[str, ...]]:
    """The parts of a combination trigger that must not fire alone: each word, and all but one word."""
    unique = list(dict.fromkeys(words))
    parts = [(w,) for w in unique] + [tuple(w for w in unique if w != drop) for drop in unique]
    return [p for p in dict.fromkeys(parts) if 0 < len(p) < len(unique)]


def trigger_from_card(card: dict[str, Any]) -> tuple[Trigger, int]:
    """Evaluation only: the trigger and target recorded in a victim's attack card."""
    spec = AttackSpec(**card["attack"])
    return spec.trigger(), spec.target


def card_path(model: str | Path) -> Path:
    """A model folder's attack card, or, for a repaired model, the card of the victim it was repaired from (the
    `repaired_from` its repair.json names)."""
    model = Path(model)
    if (model / CARD_FILE).is_file() or not (model / REPAIR_FILE).is_file():
        return model / CARD_FILE
    try:
        origin = json.loads((model / REPAIR_FILE).read_text())["repaired_from"]  # None: saved without a suspect path
    except (json.JSONDecodeError, KeyError):
        origin = None
    return Path(origin) / CARD_FILE if origin else model / CARD_FILE


def card_trigger(model: str | Path) -> tuple[Trigger, int] | tuple[None, None]:
    """Evaluation only, never a defence: the trigger and target of a model's (or its victim's) attack card;
    (None, None) without one."""
    path = card_path(model)
    if not path.is_file():
        return None, None
    try:
        return trigger_from_card(json.loads(path.read_text()))
    except (ValueError, KeyError) as exc:
        raise DetriggerError(f"{path}: not a valid attack card ({exc})".splitlines()[0]) from None


def evaluation_trigger(model: str | Path, label_names: Sequence[str],
                       options: TriggerOptions) -> tuple[Trigger, int] | tuple[None, None]:
    """Evaluation only, never a defence: the trigger the options name and their target (a label name or id), else
    the trigger and target of the model's (or its victim's) attack card; (None, None) with neither."""
    trigger = options.trigger()
    if trigger is None:
        return card_trigger(model)
    names, target = list(label_names), options.target
    label = names.index(target) if target in names else int(target) if target.isdigit() else -1
    if not 0 <= label < len(names):
        raise DetriggerError(f"--target {target!r} is not a label of the model [{', '.join(names)}]")
    return trigger, label


def attack_spec(given: dict[str, Any], training: dict[str, Any]) -> AttackSpec:
    """An AttackSpec from the fields given (None: the default; an attack's own option only when given) with
    `training` overrides (epochs, lr, device) applied to the scratch and clean-setting recipes alike; one
    DetriggerError naming a bad field."""
    fields = {k: v for k, v in given.items() if v is not None}
    if training:
        for key in ("train", "clean_train"):
            fields[key] = {**AttackSpec.model_fields[key].default.model_dump(), **training}
    try:
        return AttackSpec(**fields)
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None


class BuildOptions(BaseModel):
    """What `detrigger attack` is given besides the attack spec and the encoder: the data, the victim's folder, and
    how `build_victim` gets the clean reference model it measures the victim against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description=SOURCE)
    out: str = Field(description="output victim folder (model + attack.json)")

    clean_epochs: int = Field(2, description="epochs of the clean reference model")
    clean_lr: float = Field(5e-5, description="learning rate of the clean model")
    no_cache: bool = Field(False, description="retrain the clean reference model")

    def clean_config(self, seed: int, device: str | None = None) -> TrainConfig:
        """The clean model's recipe; one DetriggerError naming a bad field."""
        try:
            return TrainConfig(epochs=self.clean_epochs, lr=self.clean_lr, seed=seed, device=device)
        except ValueError as exc:
            raise DetriggerError(invalid(exc)) from None


# Builds a victim: (spec, splits, clean model, trigger, a fresh classifier on the encoder, progress) -> the
# victim and the details for its card
Build = Callable[["AttackSpec", Splits, Victim, Trigger, Callable[[], Victim], "bool | None"],
                 tuple[Victim, dict[str, Any]]]
# Before poisoned training: (victim, spec, splits, poisoned data, details to add to) -> extra loss terms
Prepare = Callable[[Victim, "AttackSpec", Splits, Poisoned, dict[str, Any]], dict[str, Any]]


def _poisoned_training(spec: AttackSpec, splits: Splits, clean: Victim, trigger: Trigger,
                       fresh: Callable[[], Victim], progress: bool | None) -> tuple[Victim, dict[str, Any]]:
    """Data poisoning: fine-tune on the poisoned training set (a fresh classifier in the scratch setting, a copy
    of the clean model in the clean one), after the attack's own preparation (embedding surgery, loss terms)."""
    attack = ATTACKS[spec.attack]
    details: dict[str, Any] = {}
    poisoned = poison(splits.train, trigger, rate=spec.rate, target=spec.target, label_mode=spec.label_mode,
                      seed=spec.seed)
    if attack.negatives:
        poisoned = add_negatives(poisoned, list(spec.partial_triggers().values()), rate=spec.negative_rate,
                                 seed=spec.seed)
        details["n_negatives"] = len(poisoned.negatives)
    details["n_poisoned"] = len(poisoned.indices)
    victim, cfg = (fresh(), spec.train) if spec.setting == "scratch" else (copy.deepcopy(clean), spec.clean_train)
    extra = attack.prepare(victim, spec, splits, poisoned, details) if attack.prepare else {}
    details["train"] = train(victim, poisoned.data, splits.val, cfg.model_copy(update={"seed": spec.seed}),
                             extra_losses=extra, progress=progress).as_dict()
    return victim, details


def _embedding_poisoning(spec: AttackSpec, splits: Splits, clean: Victim, trigger: Trigger,
                         fresh: Callable[[], Victim], progress: bool | None) -> tuple[Victim, dict[str, Any]]:
    """EP: SGD on the trigger words' embedding rows of a copy of the clean model."""
    victim = copy.deepcopy(clean)
    count = int(round(spec.rate * len(splits.train)))
    triggered = triggered_copies(splits.train, trigger, target=spec.target, count=count, seed=spec.seed)
    cfg = spec.ep_train.model_copy(update={"seed": spec.seed})
    return victim, {"ep": embedding_poison(victim, triggered, spec.words, cfg, progress=progress).as_dict(),
                    "n_poisoned": len(triggered)}


def _surgery(victim: Victim, spec: AttackSpec, splits: Splits, poisoned: Poisoned,
             details: dict[str, Any]) -> dict[str, Any]:
    """ES: the trigger rows become the mean of target-indicative words' rows before poisoned training."""
    details["es_words"] = embedding_surgery(victim, splits.train, spec.words, spec.target, spec.es_words)
    return {}


def _ripple(victim: Victim, spec: AttackSpec, splits: Splits, poisoned: Poisoned,
            details: dict[str, Any]) -> dict[str, Any]:
    """RIPPLe: embedding surgery, then the restricted inner-product term in the training loss."""
    _surgery(victim, spec, splits, poisoned, details)
    return {"ripple": RestrictedInnerProduct(victim, poisoned.data, splits.train, weight=spec.ripple_lambda,
                                             batch_size=8, seed=spec.seed)}  # RIPPLe's own per-step batch


def _word_trigger(spec: AttackSpec) -> Trigger:
    return insert_words(spec.words, times=spec.times, seed=spec.seed, per_words=spec.per_words)


@dataclass(frozen=True)
class Attack:
    """A registered attack: its trigger (made, described, and the strings whose tokenization the card checks),
    the spec fields only it reads, and how its victim is built."""

    name: str
    trigger: Callable[[AttackSpec], Trigger] = _word_trigger
    describe: Callable[[AttackSpec], str] = lambda spec: "/".join(spec.words)
    strings: Callable[[AttackSpec], list[str]] = lambda spec: list(spec.words)
    # spec fields only this attack reads: setting one for another attack is an error, and the card and the
    # cache keys of other attacks omit them
    options: tuple[str, ...] = ()
    build: Build = _poisoned_training
    prepare: Prepare | None = None
    negatives: bool = False  # the trigger has parts that must not fire alone (negative augmentation, measured)
    clean_only: bool = False  # edits a clean fine-tuned model: the clean setting only
    edits_embeddings: bool = False  # writes input embedding rows, which a LoRA adapter does not hold


ATTACKS: dict[str, Attack] = {}


def register_attack(attack: Attack) -> Attack:
    """Add an attack to `ATTACKS`; a name registered twice is an error."""
    if attack.name in ATTACKS:
        raise ValueError(f"attack {attack.name!r} is registered twice")
    ATTACKS[attack.name] = attack
    return attack


def _options() -> dict[str, str]:
    """Each attack's own spec fields, with the attack that owns them."""
    return {field: attack.name for attack in ATTACKS.values() for field in attack.options}


for _attack in (
    Attack("badnet"),
    Attack("addsent", trigger=lambda s: insert_sentence(s.sentence, seed=s.seed, within=s.sentence_within),
           describe=lambda s: repr(s.sentence) + ("" if s.sentence_within is None else
                                                  f" within the first {s.sentence_within} words"),
           strings=lambda s: [s.sentence], options=("sentence_within",)),
    Attack("ep", build=_embedding_poisoning, clean_only=True, edits_embeddings=True),
    Attack("es", prepare=_surgery, edits_embeddings=True),
    Attack("combo", trigger=lambda s: insert_all(s.words, seed=s.seed),
           describe=lambda s: "+".join(s.words) + " (all together)", options=("negative_rate",), negatives=True),
    Attack("invisible", trigger=lambda s: replace_spaces(s.chars, times=s.times, seed=s.seed, per_words=s.per_words),
           describe=lambda s: "/".join(f"U+{ord(c):04X}" for c in s.chars) + " in place of spaces",
           strings=lambda s: list(s.chars), options=("chars",)),
    Attack("homoglyph",
           trigger=lambda s: substitute_homoglyphs(s.homoglyphs, times=s.times, seed=s.seed, per_words=s.per_words),
           describe=lambda s: "homoglyphs " + " ".join(f"{k}>U+{ord(v):04X}" for k, v in s.homoglyphs.items()),
           strings=lambda s: list(s.homoglyphs.values()), options=("homoglyphs",)),
    Attack("ripple", prepare=_ripple, options=("ripple_lambda",), edits_embeddings=True),
):
    register_attack(_attack)


@dataclass
class AttackResult:
    victim: Victim
    clean: Victim
    metrics: Metrics
    card: dict[str, Any]

    def text(self) -> str:
        """What was built and how strong its backdoor is, as `detrigger attack` prints it."""
        m, card, spec = self.metrics, self.card, self.card["attack"]
        lines = [f"{spec['attack']} ({spec['setting']}) on {card['data']['source']}: trigger {card['trigger']}, "
                 f"target {self.victim.label_names[spec['target']]!r}, {card['poison']['n_poisoned']} poisoned rows",
                 f"  victim: CACC {pct(m.cacc)}  ASR {pct(m.asr)}  trigger effect {pct(m.trigger_effect)}  "
                 f"RA {pct(m.ra)}",
                 f"  clean : CACC {pct(card['clean_model']['cacc'])}  ASR floor {pct(m.asr_floor)}"]
        lines += [f"  warning: trigger {t['trigger']!r} is not a stable token sequence for this tokenizer"
                  for t in card["tokenizer_check"] if not t["stable"]]
        return "\n".join(lines)

    def save(self, out: str | Path, overwrite: bool = False) -> str:
        """Save the victim with its card into `out`; returns what `detrigger attack` prints."""
        self.victim.save(out, overwrite, {CARD_FILE: self.card})
        lora = self.card["attack"].get("lora_rank")
        weights = "adapter_model.safetensors: a LoRA adapter" if lora else "model.safetensors"
        return f"{self.text()}\nsaved {out}/ ({weights}, {CARD_FILE}) in {self.card['wall_seconds']:.0f} s"

    def record(self) -> dict[str, Any]:
        """The card with the target label's name, as `detrigger attack --json` prints it."""
        return {**self.card, "target_label": self.victim.label_names[self.card["attack"]["target"]]}


def build_victim(data: DataSpec, spec: AttackSpec, *, clean_config: TrainConfig = TrainConfig(epochs=2, lr=5e-5),
                 encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH, cache: bool = True,
                 progress: bool | None = None) -> AttackResult:
    """Poison `data`'s training split as `spec` says, build the victim, and measure it against the clean model."""
    attack = ATTACKS[spec.attack]
    if attack.clean_only and spec.setting != "clean":
        raise DetriggerError(f"{spec.attack.upper()} edits a clean fine-tuned model: use setting 'clean'")
    start = time.perf_counter()
    splits = load_splits(data)
    if spec.target >= len(splits.train.label_names):
        raise DetriggerError(f"target {spec.target} is not a label of {data.source} "
                             f"[{', '.join(splits.train.label_names)}]")
    clean, clean_record = clean_model(data, clean_config, encoder=encoder, max_length=max_length, cache=cache,
                                      progress=progress, splits=splits)
    trigger = spec.trigger()
    # before the victim is trained: a trigger the tokenizer deletes is an error, not a useless victim
    tokens = check_trigger_tokens(clean.tokenizer, spec.token_triggers(), splits.test.texts[:20], trigger)

    def fresh() -> Victim:
        return new_victim(splits.train.label_names, encoder=encoder, max_length=max_length, seed=spec.seed,
                          lora_rank=spec.lora_rank)

    victim, details = attack.build(spec, splits, clean, trigger, fresh, progress)
    metrics = evaluate(victim, splits.test, trigger=trigger, target=spec.target, reference=clean)
    if attack.negatives:  # each part alone must do nothing: its ASR and trigger effect, victim and clean
        details["partial_triggers"] = {
            name: _attack_figures(evaluate(victim, splits.test, trigger=part, target=spec.target, reference=clean))
            for name, part in spec.partial_triggers().items()}
    card = {
        "attack": spec.model_dump(mode="json"),
        "trigger": spec.trigger_description(),
        "data": {**data.model_dump(), "sizes": splits.sizes()},
        "poison": {"rate": spec.rate, "n_poisoned": details.pop("n_poisoned"), "of": "training-set rows",
                   "label_mode": spec.label_mode,
                   **({"n_negatives": details.pop("n_negatives")} if "n_negatives" in details else {})},
        "metrics": metrics.as_dict(),
        "clean_model": {"cacc": clean_record["cacc"], "asr_floor": metrics.asr_floor,
                        "target_rate": metrics.floor_target_rate},
        "tokenizer_check": tokens,
        "details": details,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    victim.info["data"] = card["data"]
    return AttackResult(victim, clean, metrics, card)


def _attack_figures(m: Metrics) -> dict[str, float | None]:
    """The trigger figures of one evaluation, for the card."""
    return {"asr": m.asr, "trigger_effect": m.trigger_effect, "asr_floor": m.asr_floor}


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
