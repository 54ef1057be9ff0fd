"""NAD and MBTSAD: distil a teacher's attention maps and hidden states into the suspect model.

- NAD (Li et al., ICLR 2021), adapted to transformers: teacher = the suspect model fine-tuned on the
  clean subset; student = the suspect model trained with CE + beta_att * L_att + beta_hid * L_hid.
- MBTSAD (Niu et al., 2025): teacher = a copy of the suspect model retrained on token-split clean data
  (`splitting.py`); student = the suspect model distilled towards it on the unsplit clean subset; needs
  no pre-trained weights.

This is the literal reading of MBTSAD (both models fed the same unsplit text at distillation). On MR
with a BadNet victim it changes nothing (the split-trained teacher never sees the trigger whole and
stays backdoored; see ../shared/docs/methods.md): the readings that might work are open work (issue 5).
`stage="teacher"` returns the teacher itself (the "teacher only" ablation).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

from pydantic import Field

from detrigger.data.dataset import TextDataset
from detrigger.defenses.base import Context, DefenceConfig, register
from detrigger.defenses.splitting import split_dataset
from detrigger.evaluation.metrics import accuracy, predict
from detrigger.models.victim import Victim
from detrigger.training.distill import FORWARD_KWARGS, distillation, prepare_student
from detrigger.training.loop import TrainConfig, train


class DistillConfig(DefenceConfig):
    beta_att: float = Field(1.0, ge=0, description="weight of the attention-map MSE")
    beta_hid: float = Field(1.0, ge=0, description="weight of the hidden-state MSE")
    layers: tuple[int, ...] | None = Field(None, description="layers to distil (default: all)")
    teacher_train: TrainConfig = Field(TrainConfig(epochs=3, lr=5e-5), description="training of the teacher")


class MbtsadConfig(DistillConfig):
    split_probability: float = Field(1.0, ge=0, le=1, description="chance that a word is split")
    split_min_length: int = Field(2, ge=2, description="shortest word that is split")
    split_copies: int = Field(1, ge=1, description="split copies of each clean text")
    keep_originals: bool = Field(False, description="also train the teacher on the unsplit texts")
    teacher_max_length_factor: float = Field(2.0, ge=1, description="split text is longer: the teacher's max length x this")
    stage: Literal["full", "teacher"] = Field("full", description="'teacher': return the teacher (ablation)")


def _distil(student: Victim, teacher: Victim, context: Context, config: DistillConfig) -> dict[str, Any]:
    prepare_student(student)
    term = distillation(teacher, beta_att=config.beta_att, beta_hid=config.beta_hid, layers=config.layers)
    cfg = config.train.model_copy(update={"seed": config.seed})
    result = train(student, context.clean.train, context.clean.val, cfg, extra_losses={"distill": term},
                   forward_kwargs=FORWARD_KWARGS)
    student.set_attention("sdpa")
    return result.as_dict()


def _teacher(victim: Victim, train_data: TextDataset, val: TextDataset, config: DistillConfig,
             max_length: int) -> tuple[Victim, dict[str, Any]]:
    teacher = copy.deepcopy(victim)
    teacher.max_length = max_length
    cfg = config.teacher_train.model_copy(update={"seed": config.seed})
    result = train(teacher, train_data, val, cfg)
    return teacher, result.as_dict()


@register("nad", DistillConfig, needs_reference=False,
          summary="distil a clean-fine-tuned copy's attention and hidden states into the suspect model")
def nad(victim: Victim, context: Context, config: DistillConfig) -> tuple[Victim, dict[str, Any]]:
    start = time.perf_counter()
    teacher, teacher_train = _teacher(victim, context.clean.train, context.clean.val, config, victim.max_length)
    val = context.clean.val
    stages = {"teacher_seconds": round(time.perf_counter() - start, 1)}
    teacher_acc = accuracy(predict(teacher, val.texts), val.labels)
    start = time.perf_counter()
    distil = _distil(victim, teacher, context, config)
    stages["distill_seconds"] = round(time.perf_counter() - start, 1)
    return victim, {"teacher_val_accuracy": teacher_acc, "stages": stages, "teacher_train": teacher_train,
                    "train": distil}


@register("mbtsad", MbtsadConfig, needs_reference=False,
          summary="retrain a copy on token-split clean data, distil it into the suspect model (no pre-trained weights)")
def mbtsad(victim: Victim, context: Context, config: MbtsadConfig) -> tuple[Victim, dict[str, Any]]:
    start = time.perf_counter()
    split_kwargs = dict(probability=config.split_probability, min_length=config.split_min_length,
                        copies=config.split_copies, seed=config.seed)
    split_train = split_dataset(context.clean.train, keep_originals=config.keep_originals, **split_kwargs)
    split_val = split_dataset(context.clean.val, **{**split_kwargs, "copies": 1})
    stages = {"split_seconds": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    max_length = int(victim.max_length * config.teacher_max_length_factor)
    teacher, teacher_train = _teacher(victim, split_train, split_val, config, max_length)
    stages["teacher_seconds"] = round(time.perf_counter() - start, 1)
    val = context.clean.val
    details: dict[str, Any] = {"teacher_val_accuracy": accuracy(predict(teacher, val.texts), val.labels),
                               "teacher_split_val_accuracy": teacher_train["best_val_accuracy"],
                               "teacher_train": teacher_train, "stages": stages}
    if config.stage == "teacher":
        teacher.max_length = victim.max_length
        return teacher, details
    start = time.perf_counter()
    details["train"] = _distil(victim, teacher, context, config)
    stages["distill_seconds"] = round(time.perf_counter() - start, 1)
    return victim, details
