"""detrigger: find and remove backdoors in fine-tuned transformer text classifiers, offline.

    from detrigger import load_data, split, new_victim, train, TrainConfig, evaluate, insert_words

Names are imported on first use (PEP 562), so `import detrigger` and `detrigger --help` stay fast and
torch is only loaded when a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "insert_sentence": "detrigger.triggers", "insert_words": "detrigger.triggers", "AttackSpec": "detrigger.attacks",
    "build_victim": "detrigger.attacks", "poison": "detrigger.attacks",
    "CORPORA": "detrigger.data", "TextDataset": "detrigger.data", "clean_subset": "detrigger.data",
    "load_data": "detrigger.data", "split": "detrigger.data",
    "DetriggerError": "detrigger.errors",
    "Metrics": "detrigger.evaluation", "evaluate": "detrigger.evaluation", "predict": "detrigger.models.predict",
    "Victim": "detrigger.models", "default_encoder_path": "detrigger.models", "load_victim": "detrigger.models",
    "new_victim": "detrigger.models",
    "TrainConfig": "detrigger.training", "TrainResult": "detrigger.training", "train": "detrigger.training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detrigger' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
