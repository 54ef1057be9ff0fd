"""Defences: one verb, `repair(victim, clean, method=..., reference=..., config=...)`, and a plain registry."""

from detrigger.defences import distillation, epur, finetune, mixing, pruning  # noqa: F401  (register the defences)

# isort: split
from detrigger.defences import auto  # noqa: F401  (after the defences it composes)
from detrigger.defences.base import (
    DEFENCES,
    DefenceConfig,
    RepairReport,
    RepairResult,
    StepDetails,
    StepFacts,
    defender_clean,
    options_config,
    repair,
    step_configs,
)

__all__ = ["DEFENCES", "DefenceConfig", "RepairReport", "RepairResult", "StepDetails", "StepFacts", "defender_clean",
           "options_config", "repair", "step_configs"]
