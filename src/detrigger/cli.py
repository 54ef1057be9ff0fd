"""The `detrigger` command line: parses, validates, calls the API, prints. Bad input exits with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from detrigger.errors import DetriggerError, invalid

log = logging.getLogger("detrigger")


# ---------------------------------------------------------------------------------------------- helpers

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _print_saved(record: dict, out: Path) -> int:
    """`--json` of a command that saved a folder: its record, the folder and the files in it."""
    print(json.dumps({**record, "out": str(out), "files": _files(out)}, indent=2))
    return 0


def _size(value: str) -> float | int:
    """A split size: `0.2` is a fraction, `800` a count."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or a count: {value!r}") from None


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="text", help="text column of a CSV/TSV/JSONL file (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a file (default: label)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the model's, else 0)")
    p.add_argument("--val", type=_size, default=None, help="validation size, fraction or count (default 0.1)")
    p.add_argument("--test", type=_size, default=None, help="test size, fraction or count (default 0.2)")


def _trigger_options(p: argparse.ArgumentParser, purpose: str, target_note: str = "") -> None:
    """The evaluation trigger (never given to a defence): words or a sentence, insertions, seed, target."""
    p.add_argument("--trigger-word", action="append", metavar="WORD",
                   help=f"{purpose} this trigger word (repeatable: one is drawn per insertion)")
    p.add_argument("--trigger-sentence", default=None, help=f"{purpose} this trigger sentence")
    p.add_argument("--times", type=int, default=1, help="trigger words inserted per text (default 1)")
    p.add_argument("--trigger-seed", type=int, default=0, help="seed of the insertion positions (default 0)")
    p.add_argument("--target", default="1", help=f"target label, name or id (default 1{target_note})")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-map", default=None, metavar="MAP",
                   help="rename the model's labels to the data's: LABEL_0=negative,LABEL_1=positive or a JSON file")
    p.add_argument("--base", default=None, help="a LoRA adapter's base model folder or hub id (default: the one its "
                   "adapter_config.json names)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load .bin/.pt weights (runs pickle: trusted files only)")


def _load_model(args: argparse.Namespace, name: str):
    """A model folder, hub id or LoRA adapter (merged into its base) from the command line, with its labels
    renamed by --label-map."""
    from detrigger.models import load_victim
    from detrigger.models.victim import parse_label_map

    victim = load_victim(name, allow_pickle=args.allow_pickle, base=args.base)
    if args.label_map:
        victim.rename_labels(parse_label_map(args.label_map))
    return victim


def _spec(args: argparse.Namespace, source: str, recorded: dict | None = None):
    """A DataSpec from the command line; unset options fall back to those recorded with a model."""
    from detrigger.data import DataSpec

    recorded = recorded if recorded and recorded.get("source") == source else {}
    fields = {"source": source, "text_column": args.text_column, "label_column": args.label_column}
    for key in ("seed", "val", "test", "max_train"):
        value = getattr(args, key, None)
        if value is None:
            value = recorded.get(key)
        if value is not None:
            fields[key] = value
    try:
        return DataSpec(**fields)
    except ValueError as exc:  # pydantic names the field
        raise DetriggerError(invalid(exc)) from None


def _labelled(args: argparse.Namespace, source: str, victim, split: str):
    """Labelled texts for a model, on its labels: `split` (train/val/test) of `source` split as recorded with
    the model, or all of it with `split="all"`."""
    from detrigger.data import load_data, load_splits

    if split != "all":
        return getattr(load_splits(_spec(args, source, victim.info.get("data")), label_names=victim.label_names), split)
    return load_data(source, text_column=args.text_column, label_column=args.label_column,
                     label_names=victim.label_names)


def _trigger_and_target(args: argparse.Namespace, model: Path, label_names: Sequence[str]):
    """The trigger and target from the options, else from the model's (or its victim's) attack card;
    (None, None) when neither exists. Evaluation and plots only: never a defence."""
    from detrigger.attacks import trigger_from_card

    trigger = _trigger(args)
    if trigger:
        return trigger, _target_id(args.target, label_names)
    card_path = _card_path(model)
    if not card_path.is_file():
        return None, None
    try:
        return trigger_from_card(json.loads(card_path.read_text()))
    except (ValueError, KeyError) as exc:
        raise DetriggerError(f"{card_path}: not a valid attack card ({exc})".splitlines()[0]) from None


# ---------------------------------------------------------------------------------------------- data

def cmd_data_list(args: argparse.Namespace) -> int:
    from detrigger.data import CORPORA
    from detrigger.data.fetch import is_fetched

    print(f"{'name':<13} {'classes':<8} {'fetched':<8} description")
    for c in CORPORA.values():
        print(f"{c.name:<13} {len(c.label_names):<8} {'yes' if is_fetched(c.archive) else 'no':<8} {c.description}")
    print("\nAlso: a .csv/.tsv/.jsonl file, a saved Hugging Face data set folder, or hf:NAME[:CONFIG].")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from detrigger.data import CORPORA
    from detrigger.data.fetch import fetch

    names = args.names or list(CORPORA)
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise DetriggerError(f"unknown corpus {unknown[0]!r} (built-in: {', '.join(CORPORA)})")
    for name in names:
        print(f"{name}: {fetch(CORPORA[name].archive)}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from detrigger.data import load_splits

    spec = _spec(args, args.name)
    splits = load_splits(spec)
    whole = len(splits.train) + len(splits.val) + len(splits.test)
    print(f"{args.name}: {whole} rows after exact-duplicate removal, {len(splits.train.label_names)} classes")
    counts = {name: 0 for name in splits.train.label_names}
    for part in (splits.train, splits.val, splits.test):
        for name, n in part.counts().items():
            counts[name] += n
    for i, (name, n) in enumerate(counts.items()):
        print(f"  {i} {name:<15} {n:>7}  {100 * n / whole:5.1f}%")
    print(f"split (seed {spec.seed}): " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    lengths = sorted(len(t.split()) for t in splits.train.texts)
    print(f"words per text (train): median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    for text, label in list(zip(splits.train.texts, splits.train.labels))[: args.rows]:
        short = text if len(text) <= 100 else text[:97] + "..."
        print(f"  [{splits.train.label_names[label]}] {short}")
    return 0


# ---------------------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import load_splits
    from detrigger.io import check_output_dir
    from detrigger.training import TrainConfig, fine_tune_new

    out = Path(args.out)
    check_output_dir(out, args.overwrite)  # refuse before spending minutes of training
    spec = _spec(args, args.data)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.train_seed
                         if args.train_seed is not None else spec.seed, precision=args.precision, device=args.device)
    start = time.perf_counter()
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    log_lines: list[str] = []
    handler = _ListHandler(log_lines)
    logging.getLogger("detrigger").addHandler(handler)
    try:
        victim, result, metrics = fine_tune_new(splits, config, encoder=args.encoder, max_length=args.max_length,
                                                progress=False if args.no_progress else None)
    finally:
        logging.getLogger("detrigger").removeHandler(handler)
    victim.info["data"] = {**spec.model_dump(), "sizes": splits.sizes()}
    wall = time.perf_counter() - start
    record = {"cacc": metrics.cacc, "n_test": metrics.n_test, "best_val_accuracy": result.best_val_accuracy,
              "best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1),
              "wall_seconds": round(wall, 1), "train_tokens_per_s": result.as_dict()["tokens_per_s"],
              "data": victim.info["data"]}
    victim.save(out, overwrite=args.overwrite, extra_files={
        "metrics.json": record,
        "run.json": {"command": "train", "data": spec.model_dump(), "train": config.model_dump(),
                     "encoder": victim.source, "max_length": args.max_length},
        "train.log": "\n".join(log_lines) + "\n"})
    if args.json:
        return _print_saved(record, out)
    print(f"CACC {_pct(metrics.cacc)}% on {metrics.n_test} held-out test texts "
          f"(validation {_pct(result.best_val_accuracy)}%, epoch {result.best_epoch} kept); "
          f"trained in {result.train_seconds:.0f} s ({record['train_tokens_per_s']} tokens/s), total {wall:.0f} s")
    print(f"saved {out}/ (model.safetensors, metrics.json, run.json, train.log)")
    return 0


class _ListHandler(logging.Handler):
    """Collects the run's log lines so they are saved with the model."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# ---------------------------------------------------------------------------------------------- attack

def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import ATTACKS, CARD_FILE, AttackSpec, build_victim
    from detrigger.io import check_output_dir
    from detrigger.training import TrainConfig

    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    clean_only = args.attack in ATTACKS and ATTACKS[args.attack].clean_only  # an unknown name: AttackSpec says so
    spec_fields = {"attack": args.attack, "setting": args.setting or ("clean" if clean_only else "scratch"),
                   "target": args.target, "rate": args.rate, "label_mode": args.label_mode, "seed": args.seed,
                   "times": args.times}
    if args.lora is not None:
        spec_fields["lora_rank"] = args.lora
    if args.words:
        spec_fields["words"] = tuple(args.words)
    if args.sentence:
        spec_fields["sentence"] = args.sentence
    for key in ("chars", "negative_rate", "ripple_lambda"):  # options of one attack each: only when given
        if getattr(args, key) is not None:
            spec_fields[key] = tuple(getattr(args, key)) if key == "chars" else getattr(args, key)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("device", args.device)) if v is not None}
    if overrides:  # applied to the scratch and clean-setting recipes alike
        for key in ("train", "clean_train"):
            spec_fields[key] = {**AttackSpec.model_fields[key].default.model_dump(), **overrides}
    try:
        spec = AttackSpec(**spec_fields)
        clean_config = TrainConfig(epochs=args.clean_epochs, lr=args.clean_lr, seed=args.seed, device=args.device)
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None
    data = _spec(args, args.data)
    result = build_victim(data, spec, clean_config=clean_config, encoder=args.encoder, max_length=args.max_length,
                          cache=not args.no_cache, progress=False if args.no_progress else None)
    result.victim.save(out, overwrite=args.overwrite, extra_files={CARD_FILE: result.card})
    m, card = result.metrics, result.card
    if args.json:  # the card holds every figure the text below prints
        return _print_saved({**card, "target_label": result.victim.label_names[spec.target]}, out)
    print(f"{spec.attack} ({spec.setting}) on {data.source}: trigger {card['trigger']}, target "
          f"{result.victim.label_names[spec.target]!r}, {card['poison']['n_poisoned']} poisoned rows")
    print(f"  victim: CACC {_pct(m.cacc)}  ASR {_pct(m.asr)}  trigger effect {_pct(m.trigger_effect)}  RA {_pct(m.ra)}")
    print(f"  clean : CACC {_pct(card['clean_model']['cacc'])}  ASR floor {_pct(m.asr_floor)}")
    for t in card["tokenizer_check"]:
        if not t["stable"]:
            print(f"  warning: trigger {t['trigger']!r} is not a stable token sequence for this tokenizer")
    weights = "adapter_model.safetensors: a LoRA adapter" if spec.lora_rank else "model.safetensors"
    print(f"saved {out}/ ({weights}, {CARD_FILE}) in {card['wall_seconds']:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------- repair

def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.data import CORPORA, clean_subset, load_data, load_splits
    from detrigger.defenses import DEFENCES, repair
    from detrigger.device import pick_device
    from detrigger.io import check_output_dir

    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    if args.clean_fraction is not None and args.clean_count is not None:
        raise DetriggerError("give one of --clean-fraction and --clean-count, not both")
    config = _repair_config(args, [m for m in args.method.split("+")], DEFENCES)
    victim = _load_model(args, args.victim)
    adapter = victim.info.get("adapter")
    reference = args.reference or (adapter["base"] if adapter else None)  # a LoRA suspect's base is its w_P
    victim.model.to(pick_device(args.device))
    if args.clean in CORPORA:  # the training split the victim was built from; never its test split
        pool = load_splits(_spec(args, args.clean, victim.info.get("data")), label_names=victim.label_names).train
    else:
        pool = load_data(args.clean, text_column=args.text_column, label_column=args.label_column,
                         label_names=victim.label_names)
    seed = args.seed if args.seed is not None else 0
    whole = args.clean_fraction is None and args.clean_count is None  # the user's clean data, all of it
    clean = clean_subset(pool, fraction=1.0 if whole else args.clean_fraction, count=args.clean_count, seed=seed)
    fraction = len(clean) / len(pool)
    if not args.json:
        print(f"{args.method}: {len(clean)} clean texts ({100 * fraction:.1f}% of {len(pool)} in {args.clean})")
        if adapter:
            print(f"LoRA adapter merged into its base {adapter['base']} (also the reference unless --reference); "
                  "the repaired model is saved merged, as a plain model folder")
    result = repair(victim, clean, method=args.method, reference=reference, config=config,
                    clean_fraction=fraction)
    record = result.save(out, suspect=str(Path(args.victim).resolve()), clean_data=args.clean,
                         ship_purifier=args.ship_purifier, overwrite=args.overwrite)
    if args.json:
        return _print_saved(record, out)
    for step, details in result.report.details.items():
        kept = ("rho", "val_accuracy", "suspect_val_accuracy", "reset_rows", "teacher_val_accuracy",
                "purified_val_accuracy", "purifier_vocabulary", "decision")
        summary = {k: v for k, v in details.items() if k in kept}
        if "flagged" in details:
            summary["flagged"] = " ".join(t["token"] for t in details["flagged"][:10])
        if "train" in details:
            summary["best_val_accuracy"] = details["train"]["best_val_accuracy"]
        shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        print(f"  {step}: " + ", ".join(shown))
    r = result.report
    purified = "" if r.accuracy_with_purifier is None else f", {_pct(r.accuracy_with_purifier)} with the input purifier"
    print(f"held-out clean accuracy ({r.heldout_count} texts of the clean subset not trained on): suspect "
          f"{_pct(r.accuracy_before)}, repaired {_pct(r.accuracy_after)} (weights alone){purified}")
    if record["saved"]["note"]:
        print(f"warning: {record['saved']['note']}")
    print(f"saved {out}/ ({', '.join(_files(out))}) in {r.seconds:.0f} s, peak memory {r.peak_memory_mb:.0f} MB")
    return 0


def _config_file(path: str | None) -> dict:
    """The JSON object of a --config FILE (empty without one); a one-line error naming the file otherwise."""
    if not path:
        return {}
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DetriggerError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(given, dict):
        raise DetriggerError(f"{path}: expected a JSON object")
    return given


def _repair_config(args: argparse.Namespace, steps: list[str], defences: dict) -> dict:
    """Per-step config dicts from --config FILE and the option shortcuts (each applied where the step has it)."""
    given = _config_file(args.config)
    if len(steps) == 1 and steps[0] not in given:
        given = {steps[0]: given}
    shortcuts = {"rho": args.rho, "mask": args.mask, "top_n": args.top_n, "seed": args.seed}
    train = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("device", args.device)) if v is not None}
    config = {}
    for step in steps:
        if step not in defences:
            continue  # repair() names the unknown defence
        fields = defences[step].config.model_fields
        cfg = dict(given.get(step, {}))
        cfg.update({k: v for k, v in shortcuts.items() if v is not None and k in fields})
        if train:
            cfg["train"] = {**cfg.get("train", {}), **train}
        config[step] = cfg
    return config if len(steps) > 1 else config.get(steps[0], {})


# ---------------------------------------------------------------------------------------------- split

def cmd_split(args: argparse.Namespace) -> int:
    import numpy as np

    from detrigger.splitting import split_text

    if not 0.0 <= args.probability <= 1.0:
        raise DetriggerError(f"--probability must be between 0 and 1, got {args.probability}")
    rng = np.random.default_rng(args.seed)
    for _ in range(args.copies):
        print(split_text(args.text, rng, args.probability, args.min_length))
    return 0


# ---------------------------------------------------------------------------------------------- eval

def _trigger(args: argparse.Namespace):
    from detrigger.attacks import insert_sentence, insert_words

    if args.trigger_word and args.trigger_sentence:
        raise DetriggerError("give --trigger-word or --trigger-sentence, not both")
    try:
        if args.trigger_word:
            return insert_words(args.trigger_word, times=args.times, seed=args.trigger_seed)
        if args.trigger_sentence:
            return insert_sentence(args.trigger_sentence, seed=args.trigger_seed)
    except ValueError as exc:
        raise DetriggerError(str(exc)) from None
    return None


def _target_id(value: str, label_names: Sequence[str]) -> int:
    if value in label_names:
        return list(label_names).index(value)
    try:
        target = int(value)
    except ValueError:
        target = -1
    if not 0 <= target < len(label_names):
        raise DetriggerError(f"--target {value!r} is not a label of the model [{', '.join(label_names)}]")
    return target


def _card_path(model: Path) -> Path:
    """The model's attack card, or, for a repaired model, the card of the victim it was repaired from."""
    from detrigger.attacks import CARD_FILE

    if (model / CARD_FILE).is_file() or not (model / "repair.json").is_file():
        return model / CARD_FILE
    try:
        origin = json.loads((model / "repair.json").read_text())["repaired_from"]  # None: saved without a suspect path
    except (json.JSONDecodeError, KeyError):
        origin = None
    return Path(origin) / CARD_FILE if origin else model / CARD_FILE


def cmd_eval(args: argparse.Namespace) -> int:
    from detrigger.data import CORPORA
    from detrigger.device import pick_device
    from detrigger.evaluation import evaluate
    from detrigger.models import load_victim

    device = pick_device(args.device)
    victim = _load_model(args, args.model)
    trigger, target = _trigger_and_target(args, Path(args.model), victim.label_names)
    victim.model.to(device)
    reference = None
    if args.reference:
        reference = load_victim(args.reference, allow_pickle=args.allow_pickle)
        reference.model.to(device)
        victim.check_labels(reference.label_names, f"{args.reference}:")
    split = args.split or ("test" if args.data in CORPORA else "all")
    test = _labelled(args, args.data, victim, split)
    m = evaluate(victim, test, trigger=trigger, target=target, reference=reference,
                 progress=False if args.no_progress else None)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "split": split, **m.as_dict()}, indent=2))
        return 0
    print(f"{args.model} on {args.data} ({split}, {m.n_test} texts)")
    print(f"  CACC            {_pct(m.cacc)}")
    if trigger:
        print(f"  ASR             {_pct(m.asr)}   ({m.n_poisoned} non-target texts, target "
              f"{victim.label_names[m.target]!r})")
        print(f"  target w/o trig {_pct(m.target_rate)}")
        print(f"  trigger effect  {_pct(m.trigger_effect)}   (ASR minus the target rate without the trigger)")
        print(f"  RA              {_pct(m.ra)}")
        if reference is not None:
            print(f"  ASR floor       {_pct(m.asr_floor)}   (reference model, same texts; "
                  f"its target rate w/o trigger {_pct(m.floor_target_rate)})")
    return 0


# ---------------------------------------------------------------------------------------------- plot

def cmd_plot_representations(args: argparse.Namespace) -> int:
    import numpy as np

    from detrigger.data import CORPORA
    from detrigger.device import pick_device
    from detrigger.evaluation.representations import plot_representations
    from detrigger.models import load_victim
    from detrigger.splitting import split_text

    device = pick_device(args.device)
    models = {}
    for folder in args.models:
        victim = load_victim(folder, allow_pickle=args.allow_pickle)
        victim.model.to(device)
        models[Path(folder).name] = victim
    first = next(iter(models.values()))
    trigger, target = _trigger_and_target(args, Path(args.models[0]), first.label_names)
    if trigger is None:
        raise DetriggerError("give --trigger-word or --trigger-sentence (the first model has no attack card)")
    data = _labelled(args, args.data, first, "test" if args.data in CORPORA else "all")
    pool = [t for t, y in zip(data.texts, data.labels) if y != target]
    seed = args.seed if args.seed is not None else 0
    rng = np.random.default_rng(seed)
    texts = [pool[i] for i in rng.permutation(len(pool))[:args.samples]]
    groups = {"clean": texts, "token-split": [split_text(t, rng) for t in texts],
              "triggered": [trigger(t) for t in texts]}
    for path in plot_representations(models, groups, args.out, pooling=args.pooling, seed=seed):
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- scan

SCAN_EXIT = "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error (the clamscan convention)"


def cmd_scan(args: argparse.Namespace) -> int:
    """Exit status 0 / 1 / 2 (SCAN_EXIT), so a pipeline can gate on it; a crash is 2, never a verdict."""
    try:
        return _scan(args)
    except DetriggerError:
        raise
    except Exception:
        log.exception("scan failed")
        return 2


def _scan(args: argparse.Namespace) -> int:
    from detrigger.data import CORPORA
    from detrigger.device import pick_device
    from detrigger.scan import ScanConfig, scan

    try:
        options = {"samples": args.samples, "candidates": args.candidates, "rounds": args.rounds,
                   "threshold": args.threshold}
        config = ScanConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None
    victim = _load_model(args, args.model)
    victim.model.to(pick_device(args.device))
    clean = _labelled(args, args.clean, victim, "val" if args.clean in CORPORA else "all")  # held out
    report = scan(victim, clean, reference=args.reference, config=config, progress=False if args.no_progress else None)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 1 if report.verdict == "backdoored" else 0


# ---------------------------------------------------------------------------------------------- filter

FILTER_LM_CORPORA = ("bbc", "amazon", "nyt", "tweets")  # ONION's default n-gram text besides the clean texts


def cmd_filter(args: argparse.Namespace) -> int:
    """An input-level defence in front of the model: fitted on --clean (threshold at --frr), applied to --data;
    FRR and CACC, and with a trigger (options or the attack card: evaluation only) FAR and ASR."""
    from detrigger.data import CORPORA, load_data
    from detrigger.device import pick_device
    from detrigger.filters import FILTERS, evaluate_filter, make_filter
    from detrigger.io import atomic_dir, check_output_dir, write_json

    if args.method not in FILTERS:
        raise DetriggerError(f"unknown filter {args.method!r} (available: {', '.join(FILTERS)})")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_dir(out, args.overwrite)
    config = _config_file(args.config)
    shortcuts = {"frr": args.frr, "threshold": args.threshold, "lm": args.lm,
                 "protect": args.protect, "word": args.rap_word}
    fields = FILTERS[args.method].cls.config_class.model_fields
    for key, value in shortcuts.items():
        if value is not None:
            if key not in fields:
                raise DetriggerError(f"--{key.replace('_', '-')} does not apply to {args.method}")
            config[key] = value
    if args.bki_train:
        if args.method != "bki":
            raise DetriggerError(f"--bki-train does not apply to {args.method}")
        config["keywords_from"] = "corpus"
    if args.frr is not None and not 0 <= args.frr < 1:
        raise DetriggerError(f"--frr must be in [0, 1), got {args.frr}")
    victim = _load_model(args, args.model)
    trigger, target = _trigger_and_target(args, Path(args.model), victim.label_names)
    victim.model.to(pick_device(args.device))
    flt = make_filter(args.method, victim, config)
    clean = _labelled(args, args.clean, victim, "val" if args.clean in CORPORA else "all")  # held out
    split = args.split or ("test" if args.data in CORPORA else "all")
    test = _labelled(args, args.data, victim, split)
    corpus: list[str] = []
    if args.method == "bki" and args.bki_train:
        corpus = list(_labelled(args, args.bki_train, victim, "train" if args.bki_train in CORPORA else "all").texts)
    if args.method == "onion" and not config.get("lm"):
        sources = args.lm_text if args.lm_text is not None else [c for c in FILTER_LM_CORPORA if c != args.data]
        for source in sources:
            if source == args.data and split != "train":
                raise DetriggerError(f"--lm-text {source}: the evaluated data set; the LM must not read its "
                                     f"{split} split")
            corpus += list(load_data(source, text_column=args.text_column, label_column=args.label_column).texts)
    progress = False if args.no_progress else None
    flt.fit(clean, corpus=corpus, progress=progress)
    m, clean_part, poisoned_part = evaluate_filter(flt, test, trigger=trigger, target=target, progress=progress)
    record = {"model": args.model, "method": args.method, "clean": args.clean, "data": args.data, "split": split,
              "config": flt.config.model_dump(mode="json"), **m.as_dict()}
    if out is not None:
        with atomic_dir(out, args.overwrite) as tmp:
            write_json(tmp / "filter.json", record)
            with (tmp / "texts.jsonl").open("w", encoding="utf-8") as f:
                parts = [("clean", test.labels, clean_part)]
                if poisoned_part is not None:
                    parts.append(("triggered", [target] * len(poisoned_part.texts), poisoned_part))
                for name, labels, part in parts:
                    for i, text in enumerate(part.texts):
                        f.write(json.dumps({"part": name, "text": text, "label": victim.label_names[labels[i]]
                                            if name == "clean" else None, "passed": bool(part.passed[i]),
                                            "flagged": bool(part.flagged[i]), "score": float(part.scores[i])},
                                           ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps({**record, **({"out": str(out)} if out else {})}, indent=2))
        return 0
    kind = "rewritten" if flt.purifier else "rejected"
    at = (f"given ({m.threshold:.4g})" if flt.config.threshold is not None else
          f"{m.threshold:.4g}, set at FRR {100 * flt.config.frr:g}% on {m.details['calibration_texts']} held-out "
          f"clean texts of {args.clean}")
    print(f"{args.method} on {args.data} ({split}, {m.n_clean} texts); threshold {at}")
    passed = int(clean_part.passed.sum())
    print(f"  FRR             {_pct(m.frr)}   (clean texts {kind})")
    rewritten = ", as rewritten" if flt.purifier else ""
    print(f"  CACC            {_pct(m.cacc)}   (on the {passed} clean texts passed{rewritten}; "
          f"without the filter {_pct(m.victim_cacc)})")
    if trigger is not None:
        print(f"  FAR             {_pct(m.far)}   (triggered texts not {kind}, of {m.n_poisoned} non-target texts "
              f"with the trigger; target {victim.label_names[target]!r})")
        print(f"  ASR             {_pct(m.asr)}   (triggered texts passed and predicted as the target / passed; "
              f"without the filter {_pct(m.victim_asr)})")
        print(f"  ASR end-to-end  {_pct(m.asr_end_to_end)}   (passed and predicted as the target / all triggered "
              "texts)")
    if "keywords" in m.details:
        print(f"  keywords        {' '.join(m.details['keywords'][:10]) or '-'}")
    if out is not None:
        print(f"saved {out}/ (filter.json, texts.jsonl)")
    print(f"{m.details.get('fit_seconds', 0) + m.seconds:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------- bench

def cmd_bench(args: argparse.Namespace) -> int:
    from detrigger.bench import load_spec, run_bench

    spec = load_spec(args.spec)
    out = Path(args.out)
    records = run_bench(spec, out, executor=args.executor, address=args.address, retry_failed=args.retry_failed,
                        progress=False if args.no_progress else None, seeds=args.seeds, attacks=args.attacks,
                        overwrite=args.overwrite)
    print((out / "results.md").read_text().rstrip())
    failed = sum(r["status"] == "failed" for r in records.values())
    print(f"\n{len(records)} cells recorded in {out}/cells ({failed} failed); "
          f"reports: {out}/results.md, results.csv, results.json, plots/")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from detrigger.bench import write_report
    from detrigger.bench.report import splice

    if not Path(args.run_dir).is_dir():
        raise DetriggerError(f"{args.run_dir}: no such run folder")
    table = write_report(args.run_dir)
    if args.into:
        splice(args.into, args.run_dir, table)
    print(table)
    return 0


# ---------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrigger", description="Find and remove backdoors in fine-tuned "
                                     "transformer text classifiers, offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this process "
                             "is given: its affinity mask and cgroup quota)")
    parser.add_argument("--version", action="version", version="detrigger 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="list, fetch and inspect data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("list", help="the built-in offline corpora")
    p.set_defaults(func=cmd_data_list)
    p = data_sub.add_parser("fetch", help="download built-in corpora into the cache (once; sha256-checked)")
    p.add_argument("names", nargs="*", help="corpora to fetch (default: all)")
    p.set_defaults(func=cmd_data_fetch)
    p = data_sub.add_parser("show", help="sizes, label balance, split sizes and a few rows of a data set")
    p.add_argument("name", help="a built-in corpus, a .csv/.tsv/.jsonl file, a saved HF folder or hf:NAME")
    p.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    _data_options(p)
    p.set_defaults(func=cmd_data_show)

    p = sub.add_parser("train", help="fine-tune a pre-trained encoder on a data set and save the classifier")
    p.add_argument("--data", required=True, help="a built-in corpus, a file, a saved HF folder or hf:NAME")
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument("--encoder", default=None, help="pre-trained encoder folder or hub id org/name (offline: only if "
                   "in the Hugging Face cache; default: embedded MiniLM-L6)")
    _data_options(p)
    p.add_argument("--max-train", type=int, default=None, help="cap the training split at N texts")
    p.add_argument("--max-length", type=int, default=128, help="truncation length in tokens (default 128)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--train-seed", type=int, default=None, help="training seed (default: the split seed)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fp32 or bf16 autocast")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print metrics.json's record (and the files saved) as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("attack", help="build a backdoored victim (BadNet, AddSent, EP, ES, combo, invisible, "
                       "homoglyph, RIPPLe) and measure it")
    p.add_argument("--data", required=True, help="a built-in corpus, a file, a saved HF folder or hf:NAME")
    p.add_argument("--attack", required=True, help="a registered attack (docs/attacks.md; an unknown name lists them)")
    p.add_argument("--setting", choices=["scratch", "clean"], default=None,
                   help="scratch: fine-tune the pre-trained encoder on poisoned data; clean: further train the "
                   "clean model (default: scratch; EP: clean)")
    p.add_argument("--out", required=True, help="output victim folder (model + attack.json)")
    p.add_argument("--words", nargs="+", default=None,
                   help="trigger words (default: cf mn bb tq mb; combo: friends weekend store, all inserted)")
    p.add_argument("--chars", nargs="+", default=None, help="invisible: characters put in place of spaces "
                   "(default: U+2800, braille blank; zero-width characters do not survive a BERT tokenizer)")
    p.add_argument("--negative-rate", type=float, default=None,
                   help="combo: rows given part of the trigger, labels kept / training rows (default: --rate "
                   "x the number of parts, 0.6 for three words)")
    p.add_argument("--ripple-lambda", type=float, default=None,
                   help="ripple: weight of the restricted inner-product term (default 0.1)")
    p.add_argument("--times", type=int, default=1, help="trigger words per text (default 1)")
    p.add_argument("--sentence", default=None, help="AddSent trigger sentence (default: I watched this 3D movie)")
    p.add_argument("--target", type=int, default=1, help="target label id (default 1)")
    p.add_argument("--rate", type=float, default=0.1, help="poisoned rows / training rows (default 0.1)")
    p.add_argument("--label-mode", choices=["dirty", "clean"], default="dirty", help="dirty (default) or clean label")
    _data_options(p)
    p.set_defaults(seed=0)
    p.add_argument("--max-train", type=int, default=None, help="cap the training split at N texts")
    p.add_argument("--max-length", type=int, default=128, help="truncation length in tokens (default 128)")
    p.add_argument("--epochs", type=int, default=None, help="epochs on poisoned data (default 2)")
    p.add_argument("--lr", type=float, default=None, help="learning rate on poisoned data (default 5e-5)")
    p.add_argument("--clean-epochs", type=int, default=2, help="epochs of the clean reference model (default 2)")
    p.add_argument("--clean-lr", type=float, default=5e-5, help="learning rate of the clean model (default 5e-5)")
    p.add_argument("--encoder", default=None, help="pre-trained encoder folder or hub id org/name (offline: only if "
                   "in the Hugging Face cache; default: embedded MiniLM-L6)")
    p.add_argument("--lora", type=int, default=None, metavar="RANK",
                   help="train the victim as a LoRA adapter of this rank over the encoder (scratch setting; not ep, "
                   "es, ripple), saved unmerged as an adapter folder (load_victim merges it; docs/models.md). LoRA "
                   "usually needs a larger --lr than full fine-tuning")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--no-cache", action="store_true", help="retrain the clean reference model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the attack.json card (and the files saved) as JSON")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("repair", help="repair a suspect model with a small clean subset "
                       "(default auto: scan, unlearn what "
                       "the scan finds, re-scan; or ft, retrain, finepruning, nad, mbtsad, mixing, finemixing, epur, "
                       "pipelines like epur+finemixing)")
    p.add_argument("victim", help="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder")
    p.add_argument("--method", default="auto", help="auto (default: scan, unlearn the verified trigger candidates, "
                   "re-scan while flagged), ft, retrain, finepruning, mixing, finemixing, epur, nad or mbtsad, or a "
                   "pipeline joined by + (epur+finemixing)")
    p.add_argument("--clean", required=True, help="clean data: a built-in corpus (its training split) or a file")
    p.add_argument("--clean-fraction", type=float, default=None,
                   help="share of the clean data to use, e.g. 0.2 (default: all of it)")
    p.add_argument("--clean-count", type=int, default=None, help="number of clean texts to use")
    p.add_argument("--reference", default=None, help="the suspect's pre-trained base model folder or hub id, same "
                   "family and vocabulary (default: a LoRA adapter's base, else the embedded MiniLM-L6)")
    p.add_argument("--out", required=True, help="output folder (model, repair.json, README.md model card)")
    p.add_argument("--config", default=None, help="JSON file with the defence config (keyed by step for pipelines)")
    p.add_argument("--rho", type=float, default=None, help="mixing: kept fraction (default: chosen on clean data)")
    p.add_argument("--mask", choices=["random", "top", "bottom"], default=None, help="mixing mask (default random)")
    p.add_argument("--top-n", type=int, default=None, help="epur: rows to reset (default 200)")
    p.add_argument("--epochs", type=int, default=None, help="clean fine-tuning epochs (default 3)")
    p.add_argument("--lr", type=float, default=None, help="clean fine-tuning learning rate (default 5e-5)")
    _data_options(p)
    p.add_argument("--ship-purifier", action="store_true",
                   help="save an input purifier (MBTSAD's; it lists your clean-data vocabulary) with the model; "
                   "the folder then behaves as repaired only through detrigger, not plain transformers "
                   "(default: the weights alone are saved, and repair.json and README.md say what they measure)")
    _model_options(p)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--json", action="store_true", help="print repair.json's record (and the files saved) as JSON")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("split", help="show MBTSAD's token splitting of a text (what its teacher is trained on)")
    p.add_argument("text", help="the text to split")
    p.add_argument("--probability", type=float, default=1.0, help="chance that a word is split (default 1)")
    p.add_argument("--min-length", type=int, default=2, help="shortest word that is split (default 2)")
    p.add_argument("--copies", type=int, default=1, help="split versions to print (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("eval", help="CACC of a model on a data set; ASR, RA and trigger effect given a trigger")
    p.add_argument("model", help="model folder (safetensors)")
    p.add_argument("data", help="a built-in corpus, a file, a saved HF folder or hf:NAME")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default=None,
                   help="which part to evaluate (default: test for built-in corpora, all for files)")
    _data_options(p)
    _trigger_options(p, "insert", "; with no trigger option, the trigger and target come from the model's "
                     "attack.json card if it has one")
    p.add_argument("--reference", default=None, help="a clean model: its ASR on the same texts is the floor")
    _model_options(p)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal anyway)")
    p.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="figures: the representation picture (PCA / t-SNE)")
    plot_sub = plot.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
    p = plot_sub.add_parser("representations", help="2-D PCA and t-SNE of sentence vectors of clean, token-split "
                            "and triggered text, a panel per model")
    p.add_argument("models", nargs="+", help="model folders (e.g. the victim, an MBTSAD teacher, the repaired model)")
    p.add_argument("--data", required=True, help="texts: a built-in corpus (its test split) or a file")
    p.add_argument("--out", required=True, help="folder for representations-pca.png and representations-tsne.png")
    p.add_argument("--samples", type=int, default=300, help="non-target texts per group (default 300)")
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="sentence vector (default cls)")
    _trigger_options(p, "insert", "; with no trigger option, the first model's attack.json card")
    _data_options(p)
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt weights (trusted files only)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.set_defaults(func=cmd_plot_representations)

    p = sub.add_parser("scan", help="is a model backdoored? rank candidate trigger tokens and the target label",
                       epilog=SCAN_EXIT)
    p.add_argument("model", help="model folder (safetensors)")
    p.add_argument("--clean", required=True,
                   help="labelled clean data: a built-in corpus (its validation split) or a file")
    p.add_argument("--reference", default=None, help="pre-trained encoder folder: adds embedding-drift evidence")
    p.add_argument("--samples", type=int, default=None, help="clean texts per label (default 200)")
    p.add_argument("--candidates", type=int, default=None,
                   help="gradient-ranked tokens per label and round, all screened (default 20)")
    p.add_argument("--rounds", type=int, default=None,
                   help="gradient rounds, each at the previous round's best token (default 2)")
    p.add_argument("--threshold", type=float, default=None,
                   help="flag at this excess flip rate over ordinary words (default: the calibrated one)")
    _data_options(p)
    _model_options(p)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal anyway)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("filter", help="input-level defences in front of a model (strip, rap, bki, onion): FRR, FAR, "
                       "CACC and ASR on the texts they let through")
    p.add_argument("model", help="model folder (safetensors)")
    p.add_argument("--method", required=True, help="strip, rap, bki or onion")
    p.add_argument("--clean", required=True, help="labelled clean data the filter is fitted and its threshold set on: "
                   "a built-in corpus (its validation split) or a file")
    p.add_argument("--data", required=True, help="texts to filter: a built-in corpus (its test split) or a file")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default=None,
                   help="which part of --data (default: test for built-in corpora, all for files)")
    p.add_argument("--frr", type=float, default=None, help="share of held-out clean texts flagged at the threshold "
                   "(default 0.05)")
    p.add_argument("--threshold", type=float, default=None, help="use this threshold instead of calibrating one")
    p.add_argument("--config", default=None, help="JSON file with the filter's config (docs/filters.md)")
    p.add_argument("--lm", default=None, metavar="FOLDER", help="onion: a Hugging Face causal LM folder (default: "
                   "the offline n-gram model)")
    p.add_argument("--lm-text", action="append", default=None, metavar="DATA",
                   help="onion: text for the n-gram LM besides the clean texts (repeatable; default: the built-in "
                   "bbc, amazon, nyt and tweets, less --data)")
    p.add_argument("--bki-train", default=None, metavar="DATA", help="bki: the suspect's training texts (a file, or a "
                   "built-in corpus's training split): keywords from them (default: from the filtered texts)")
    p.add_argument("--protect", default=None, metavar="LABEL", help="rap: check only texts predicted as this label "
                   "(the paper's form; default: every label)")
    p.add_argument("--rap-word", default=None, metavar="WORD", help="rap: the perturbation word (default dq)")
    _trigger_options(p, "measure FAR/ASR with", "; with no trigger option, the model's attack.json card")
    _data_options(p)
    _model_options(p)
    p.add_argument("--out", default=None, help="folder for filter.json (the report) and texts.jsonl (every text: "
                   "passed, flagged, score, as the model read it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal anyway)")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("bench", help="run a YAML experiment spec's grid (resumable) and write tables and plots")
    p.add_argument("spec", help="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds")
    p.add_argument("--out", required=True, help="run folder: one record per cell, results.md/csv/json, plots/")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local (default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto; default: start a local one)")
    p.add_argument("--retry-failed", action="store_true", help="rerun the cells recorded as failed")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="run only these seeds now (default: all)")
    p.add_argument("--attacks", nargs="+", default=None, help="run only these attacks (spec names) now (default: all)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that is not a run folder (its results.md, plots/ are replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="rebuild results.md/csv/json and plots of a bench run folder from its records")
    p.add_argument("run_dir", help="the folder given to bench --out")
    p.add_argument("--into", default=None, metavar="DOC",
                   help="also put the table into this Markdown file between its '<!-- detrigger report RUN_DIR -->' "
                        "and '<!-- /detrigger report -->' markers")
    p.set_defaults(func=cmd_report)
    return parser


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def _cpus_given() -> int:
    """The CPUs this process may run on: its affinity mask (`taskset`, a Slurm or Ray allocation), capped by a
    cgroup v2 CPU quota (`docker --cpus`, Kubernetes limits), which the mask does not show."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(CGROUP_CPU_MAX, encoding="utf-8") as limits:
            quota, period = limits.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def thread_env(threads: int | None) -> None:
    """Set OMP_NUM_THREADS, which torch reads when it is imported (no command has imported it yet), to
    `threads`, else leave the user's value, else the CPUs given. More threads than CPUs make torch's
    spinning workers fight over the cores (benchmarks/concurrent.py)."""
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads or _cpus_given())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.threads is not None and args.threads < 1:
            raise DetriggerError(f"--threads must be at least 1, got {args.threads}")
        thread_env(args.threads)
        return args.func(args)
    except DetriggerError as exc:
        print(f"detrigger: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detrigger: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
