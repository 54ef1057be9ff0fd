"""Defences: one verb, `repair(victim, clean, method=..., reference=..., config=...)`, and a plain registry."""

from detrigger.defenses import distillation, epur, finetune, mixing, pruning  # noqa: F401  (register the defences)

# isort: split
from detrigger.defenses import auto  # noqa: F401  (after the defences it composes)
from detrigger.defenses.base import DEFENCES, DefenceConfig, RepairReport, RepairResult, repair, step_configs

__all__ = ["DEFENCES", "DefenceConfig", "RepairReport", "RepairResult", "repair", "step_configs"]
