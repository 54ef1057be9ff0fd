"""NAD and MBTSAD: retrain a copy of the suspect model as a teacher; optionally distil its attention maps and
hidden states into the suspect model (`losses.py`).

- NAD (Li et al., ICLR 2021), adapted to transformers: teacher = the suspect model fine-tuned on the
  clean subset; student = the suspect model trained with CE + beta_att * L_att + beta_hid * L_hid.
- MBTSAD (Niu et al., 2025): teacher = a copy of the suspect model retrained on token-split clean data
  (`splitting.py`); needs no pre-trained weights.

MBTSAD departs from the paper by default (evidence in docs/results.md, "MBTSAD family"):
- The literal reading (teacher on fully split text, distilled into the suspect on unsplit text:
  `split_probability=1, keep_originals=False, distil="clean", purify_min_count=0`) leaves a rare-word
  backdoor in place: nothing in it ever shows the model the trigger whole.
- The default splits 30% of the words and keeps the originals, so the retrained model reads split
  pieces as ordinary text, and then splits at inference every word unseen in the clean subset
  (`RareWordSplitter`, saved with the model): a rare-word trigger is cut before the model reads it.
  The retrained teacher is the repaired model (`distil="none"`); distilling it into the suspect model
  (`"clean"` or `"split"`) was measured not to help and doubles the cost.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

from pydantic import Field

from detrigger.data.dataset import TextDataset
from detrigger.defences.base import Context, DefenceConfig, StepDetails, register
from detrigger.defences.distillation.losses import FORWARD_KWARGS, distillation, prepare_student
from detrigger.defences.distillation.splitting import RareWordSplitter, split_dataset
from detrigger.models.predict import accuracy_on
from detrigger.models.victim import Victim
from detrigger.training.loop import TrainConfig, train

# the stage's name in records and tables (spelt so since the first records; the code says distil)
DISTIL_STAGE = "distill_seconds"


class DistilConfig(DefenceConfig):
    beta_att: float = Field(1.0, ge=0, description="weight of the attention-map MSE")
    beta_hid: float = Field(1.0, ge=0, description="weight of the hidden-state MSE")
    layers: tuple[int, ...] | None = Field(None, description="layers to distil (default: all)")
    teacher_train: TrainConfig = Field(TrainConfig(epochs=3, lr=5e-5), description="training of the teacher")


class MbtsadConfig(DistilConfig):
    split_probability: float = Field(0.3, ge=0, le=1, description="chance that a word is split")
    split_min_length: int = Field(2, ge=2, description="shortest word that is split")
    split_copies: int = Field(1, ge=1, description="split copies of each clean text")
    keep_originals: bool = Field(True, description="also train the teacher on the unsplit texts")
    teacher_max_length_factor: float = Field(2.0, ge=1,
                                             description="split text is longer: the teacher's max length x this")
    distil: Literal["none", "clean", "split"] = Field(
        "none", description="distil the teacher into the suspect on the unsplit clean subset or on the split "
                             "data; 'none': the teacher is the repaired model")
    purify_min_count: int = Field(
        1, ge=0, description="at inference, split words seen fewer times in the clean subset (0: no purifier)")


class DistilDetails(StepDetails):
    shown = ("teacher_val_accuracy", "purified_val_accuracy", "purifier_vocabulary")

    teacher_val_accuracy: float = Field(description="the teacher's held-out clean accuracy")
    teacher_split_val_accuracy: float | None = Field(None, description="MBTSAD: the teacher's, on split text")
    teacher_train: dict[str, Any] = Field(description="the teacher's training run")
    purifier_vocabulary: int | None = Field(None, description="MBTSAD: words the purifier keeps whole")


def _distil(student: Victim, teacher: Victim, train_data: TextDataset, val: TextDataset,
            config: DistilConfig, method: str) -> dict[str, Any]:
    prepare_student(student, method)
    term = distillation(teacher, beta_att=config.beta_att, beta_hid=config.beta_hid, layers=config.layers,
                        method=method)
    cfg = config.train.model_copy(update={"seed": config.seed})
    result = train(student, train_data, val, cfg, extra_losses={"distill": term}, forward_kwargs=FORWARD_KWARGS)
    student.set_attention("default")
    return result.as_dict()


def _teacher(victim: Victim, train_data: TextDataset, val: TextDataset, config: DistilConfig,
             max_length: int) -> tuple[Victim, dict[str, Any]]:
    teacher = copy.deepcopy(victim)
    teacher.max_length = max_length
    cfg = config.teacher_train.model_copy(update={"seed": config.seed})
    result = train(teacher, train_data, val, cfg)
    return teacher, result.as_dict()


@register("nad", DistilConfig, needs_reference=False)
def nad(victim: Victim, context: Context, config: DistilConfig) -> tuple[Victim, DistilDetails]:
    """Distil a clean-fine-tuned copy's attention and hidden states into the suspect model."""
    start = time.perf_counter()
    teacher, teacher_train = _teacher(victim, context.clean.train, context.clean.val, config, victim.max_length)
    val = context.clean.val
    stages = {"teacher_seconds": round(time.perf_counter() - start, 1)}
    teacher_acc = accuracy_on(teacher, val)
    start = time.perf_counter()
    distil = _distil(victim, teacher, context.clean.train, val, config, "nad")
    stages[DISTIL_STAGE] = round(time.perf_counter() - start, 1)
    return victim, DistilDetails(teacher_val_accuracy=teacher_acc, stages=stages, teacher_train=teacher_train,
                                 train=distil)


@register("mbtsad", MbtsadConfig, needs_reference=False)
def mbtsad(victim: Victim, context: Context, config: MbtsadConfig) -> tuple[Victim, DistilDetails]:
    """Retrain a copy on partly token-split clean data; split rare words at inference (no pre-trained weights)."""
    start = time.perf_counter()
    split_kwargs = dict(probability=config.split_probability, min_length=config.split_min_length,
                        copies=config.split_copies, seed=config.seed)
    split_train = split_dataset(context.clean.train, keep_originals=config.keep_originals, **split_kwargs)
    split_val = split_dataset(context.clean.val, **{**split_kwargs, "copies": 1})
    stages = {"split_seconds": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    max_length = victim.max_length
    split_max_length = int(max_length * config.teacher_max_length_factor)
    teacher, teacher_train = _teacher(victim, split_train, split_val, config, split_max_length)
    stages["teacher_seconds"] = round(time.perf_counter() - start, 1)
    val = context.clean.val
    details: dict[str, Any] = {"teacher_val_accuracy": accuracy_on(teacher, val),
                               "teacher_split_val_accuracy": teacher_train["best_val_accuracy"],
                               "teacher_train": teacher_train, "stages": stages}
    result = teacher
    if config.distil != "none":
        start = time.perf_counter()
        if config.distil == "split":  # both models read the split text (same length, so maps align)
            victim.max_length = split_max_length
            details["train"] = _distil(victim, teacher, split_train, split_val, config, "mbtsad")
        else:
            details["train"] = _distil(victim, teacher, context.clean.train, val, config, "mbtsad")
        stages[DISTIL_STAGE] = round(time.perf_counter() - start, 1)
        result = victim
    result.max_length = max_length
    if config.purify_min_count:
        # clean-only evidence for choosing the options: held-out accuracy when the held-out words unseen in
        # the training part are cut, as unseen test words will be
        result.purifier = RareWordSplitter.from_texts(context.clean.train.texts, config.purify_min_count, config.seed)
        details["purified_val_accuracy"] = accuracy_on(result, val)
        result.purifier = RareWordSplitter.from_texts(context.clean.train.texts + val.texts,
                                                      config.purify_min_count, config.seed)
        details["purifier_vocabulary"] = len(result.purifier.vocabulary)
    return result, DistilDetails(**details)
