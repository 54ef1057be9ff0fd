"""The `detrigger` command line: parses, calls the library, prints. Bad input exits with code 2.

The library is imported inside each command, once `--threads` has set torch's thread count. Help that names a
registry or a config field's meaning and default reads them when shown (`_Doc`), so `--help` never loads torch;
an option that sets a config field reaches it as typed, and pydantic converts and checks it."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from detrigger import __version__
from detrigger.cpus import thread_env
from detrigger.errors import DetriggerError, invalid

log = logging.getLogger("detrigger")
SCAN_EXIT = "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error (the clamscan convention)"
SOURCE = "a built-in corpus, a file, a saved HF folder or hf:NAME"
ATTACK, SCAN, FILTER = "detrigger.attacks:AttackSpec", "detrigger.scan:ScanConfig", "detrigger.filters:FilterConfig"


class _Doc:
    """Help text made when it is shown (argparse formats `%(doc)s` with str())."""

    def __init__(self, make: Callable[[], str]) -> None:
        self.make = make

    def __str__(self) -> str:
        return self.make()


def _load_attr(where: str):
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def _known(where: str) -> _Doc:
    """The names in a registry (`module:REGISTRY`)."""
    return _Doc(lambda: ", ".join(_load_attr(where)))


def _field(where: str, name: str, key: str | None = None) -> _Doc:
    """A config field's description and default (`module:Model`); `key`: that field of a training recipe."""
    def make() -> str:
        info = _load_attr(where).model_fields[name]
        if key:
            recipe = info.default
            return f"{type(recipe).model_fields[key].description}, {info.description} (default {getattr(recipe, key)})"
        value = " ".join(map(str, info.default)) if isinstance(info.default, tuple) else info.default
        return info.description if value is None else f"{info.description} (default {value})"
    return _Doc(make)


def _arg(p: argparse.ArgumentParser, *flags: str, doc: _Doc, help: str = "%(doc)s", **kw) -> None:
    action = p.add_argument(*flags, **kw)
    action.help, action.doc = help, doc  # set after add_argument, which formats a help at once (Python 3.13)


def _fields(p: argparse.ArgumentParser, where: str, *names: str, **kw) -> None:
    """An option per config field, `--field-name`, its help from the field."""
    for name in names:
        _arg(p, "--" + name.replace("_", "-"), default=None, doc=_field(where, name), **kw)


def _typed(model: type, **fields):
    """A config from options (None: its default); one DetriggerError naming a bad field."""
    try:
        return model(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def _data(args: argparse.Namespace) -> dict:
    return {"text_column": args.text_column, "label_column": args.label_column, "seed": args.seed, "val": args.val,
            "test": args.test, "max_train": getattr(args, "max_train", None)}


def _texts(args: argparse.Namespace, source: str, victim, part: str | None = None, default: str = "test"):
    """Labelled texts of `source` on the model's labels: `part`, else `default` of a built-in corpus and all of
    a file, split as recorded with the model."""
    from detrigger.data import default_part, load_part

    part = part or default_part(source, default)
    return load_part(source, part, label_names=victim.label_names, recorded=victim.info.get("data"), **_data(args))


def _load(args: argparse.Namespace, name: str):
    """A model folder, hub id or LoRA adapter (merged into its base), labels renamed by --label-map, on --device."""
    import detrigger.defences  # noqa: F401  (the input transforms a repaired model may ship)
    from detrigger.device import pick_device
    from detrigger.models import load_victim
    from detrigger.models.victim import parse_label_map

    device = pick_device(args.device)
    victim = load_victim(name, allow_pickle=args.allow_pickle, base=getattr(args, "base", None))
    if getattr(args, "label_map", None):
        victim.rename_labels(parse_label_map(args.label_map))
    victim.model.to(device)
    return victim


def _trigger(args: argparse.Namespace, model: str, victim):
    """The evaluation trigger and target: the options', else the model's attack card's. Never a defence's."""
    from detrigger.attacks import evaluation_trigger

    return evaluation_trigger(model, victim.label_names, words=args.trigger_word, sentence=args.trigger_sentence,
                              times=args.times, seed=args.trigger_seed, target=args.target)


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _print_saved(record: dict, out: Path) -> int:
    """`--json` of a command that saved a folder: its record, the folder and the files in it."""
    print(json.dumps({**record, "out": str(out), "files": _files(out)}, indent=2))
    return 0


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

    unknown = [n for n in args.names if n not in CORPORA]
    if unknown:
        raise DetriggerError(f"unknown corpus {unknown[0]!r} (built-in: {', '.join(CORPORA)})")
    for name in args.names or CORPORA:
        print(f"{name}: {fetch(CORPORA[name].archive)}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, describe

    print(describe(data_spec(args.name, **_data(args)), args.rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, load_splits
    from detrigger.io import check_output_dir
    from detrigger.progress import captured_log, pct
    from detrigger.training import TrainConfig
    from detrigger.training.recipe import clean_model

    out = Path(args.out)
    check_output_dir(out, args.overwrite)  # refuse before spending minutes of training
    spec = data_spec(args.data, **_data(args))
    config = _typed(TrainConfig, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                    precision=args.precision, seed=spec.seed if args.train_seed is None else args.train_seed)
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    with captured_log() as lines:
        victim, r = clean_model(spec, config, encoder=args.encoder, max_length=args.max_length, cache=False,
                                progress=_progress(args), splits=splits)
    run = {"command": "train", "data": spec.model_dump(), "train": config.model_dump(), "encoder": victim.source,
           "max_length": args.max_length}
    victim.save(out, args.overwrite, {"metrics.json": r, "run.json": run, "train.log": "\n".join(lines) + "\n"})
    if args.json:
        return _print_saved(r, out)
    print(f"CACC {pct(r['cacc'])}% on {r['n_test']} held-out test texts (validation {pct(r['best_val_accuracy'])}%, "
          f"epoch {r['best_epoch']} kept); trained in {r['train_seconds']:.0f} s ({r['train_tokens_per_s']} "
          f"tokens/s), total {r['wall_seconds']:.0f} s\nsaved {out}/ (model.safetensors, metrics.json, run.json, "
          "train.log)")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import CARD_FILE, attack_spec, build_victim
    from detrigger.data import data_spec
    from detrigger.io import check_output_dir
    from detrigger.training import TrainConfig

    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    given = {k: getattr(args, k) for k in ("attack", "setting", "target", "rate", "label_mode", "seed", "times",
                                           "sentence", "negative_rate", "ripple_lambda", "words", "chars")}
    spec = attack_spec({**given, "lora_rank": args.lora}, {k: v for k in ("epochs", "lr", "device")
                                                           if (v := getattr(args, k)) is not None})
    clean = _typed(TrainConfig, epochs=args.clean_epochs, lr=args.clean_lr, seed=args.seed, device=args.device)
    result = build_victim(data_spec(args.data, **_data(args)), spec, clean_config=clean, encoder=args.encoder,
                          max_length=args.max_length, cache=not args.no_cache, progress=_progress(args))
    result.victim.save(out, args.overwrite, {CARD_FILE: result.card})
    if args.json:  # the card holds every figure the text below prints
        return _print_saved({**result.card, "target_label": result.victim.label_names[spec.target]}, out)
    weights = "adapter_model.safetensors: a LoRA adapter" if spec.lora_rank else "model.safetensors"
    print(f"{result.text()}\nsaved {out}/ ({weights}, {CARD_FILE}) in {result.card['wall_seconds']:.0f} s")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.defences import defender_clean, options_config, repair
    from detrigger.io import check_output_dir, read_config

    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    options = {"rho": args.rho, "mask": args.mask, "top_n": args.top_n, "seed": args.seed}
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    config = options_config(args.method, read_config(args.config), options, train)
    victim = _load(args, args.victim)
    clean, pool = defender_clean(args.clean, victim, fraction=args.clean_fraction, count=args.clean_count,
                                 **_data(args))
    if not args.json:
        print(f"{args.method}: {len(clean)} clean texts ({100 * len(clean) / pool:.1f}% of {pool} in {args.clean})")
        if "adapter" in victim.info:
            print(f"LoRA adapter merged into its base {victim.info['adapter']['base']} (also the reference unless "
                  "--reference); the repaired model is saved merged, as a plain model folder")
    result = repair(victim, clean, method=args.method, reference=args.reference, config=config,
                    clean_fraction=len(clean) / pool)
    record = result.save(out, suspect=str(Path(args.victim).resolve()), clean_data=args.clean,
                         ship_purifier=args.ship_purifier, overwrite=args.overwrite)
    if args.json:
        return _print_saved(record, out)
    print(result.report.text() + (f"\nwarning: {record['saved']['note']}" if record["saved"]["note"] else ""))
    print(f"saved {out}/ ({', '.join(_files(out))}) in {result.report.seconds:.0f} s, peak memory "
          f"{result.report.peak_memory_mb:.0f} MB")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    import numpy as np

    from detrigger.defences.distillation import split_text

    if not 0.0 <= args.probability <= 1.0:
        raise DetriggerError(f"--probability must be between 0 and 1, got {args.probability}")
    rng = np.random.default_rng(args.seed)
    print("\n".join(split_text(args.text, rng, args.probability, args.min_length) for _ in range(args.copies)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from detrigger.data import default_part
    from detrigger.evaluation import evaluate
    from detrigger.models import load_victim

    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    reference = None
    if args.reference:
        reference = load_victim(args.reference, allow_pickle=args.allow_pickle)
        reference.model.to(victim.device)
        victim.check_labels(reference.label_names, f"{args.reference}:")
    split = args.split or default_part(args.data, "test")
    m = evaluate(victim, _texts(args, args.data, victim, split), trigger=trigger, target=target, reference=reference,
                 progress=_progress(args))
    print(json.dumps({"model": args.model, "data": args.data, "split": split, **m.as_dict()}, indent=2) if args.json
          else f"{args.model} on {args.data} ({split}, {m.n_test} texts)\n{m.text(victim.label_names)}")
    return 0


def cmd_plot_representations(args: argparse.Namespace) -> int:
    from detrigger.defences.distillation import split_text
    from detrigger.evaluation.representations import plot_representations, representation_groups

    models = {Path(folder).name: _load(args, folder) for folder in args.models}
    first = next(iter(models.values()))
    trigger, target = _trigger(args, args.models[0], first)
    if trigger is None:
        raise DetriggerError("give --trigger-word or --trigger-sentence (the first model has no attack card)")
    seed = args.seed if args.seed is not None else 0
    groups = representation_groups(_texts(args, args.data, first), trigger, target, split_text, samples=args.samples,
                                   seed=seed)
    for path in plot_representations(models, groups, args.out, pooling=args.pooling, seed=seed):
        print(f"wrote {path}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Exit status 0 / 1 / 2 (SCAN_EXIT), so a pipeline can gate on it; a crash is 2, never a verdict."""
    from detrigger.scan import ScanConfig, scan

    try:
        config = _typed(ScanConfig, samples=args.samples, candidates=args.candidates, rounds=args.rounds,
                        threshold=args.threshold)
        victim = _load(args, args.model)
        report = scan(victim, _texts(args, args.clean, victim, default="val"), reference=args.reference,
                      config=config, progress=_progress(args))  # the held-out split
    except DetriggerError:
        raise
    except Exception:
        log.exception("scan failed")
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 1 if report.verdict == "backdoored" else 0


def cmd_filter(args: argparse.Namespace) -> int:
    """An input-level defence in front of the model: fitted on --clean (threshold at --frr), applied to --data;
    FRR and CACC, and with a trigger (options or the attack card: evaluation only) FAR and ASR."""
    from detrigger.data import default_part
    from detrigger.filters import FILTERS, evaluate_filter, make_filter, options_config, report_text, save_filtered
    from detrigger.filters.onion import lm_corpus
    from detrigger.io import check_output_dir, read_config

    if args.method not in FILTERS:
        raise DetriggerError(f"unknown filter {args.method!r} (available: {', '.join(FILTERS)})")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_dir(out, args.overwrite)
    options = {"--frr": ("frr", args.frr), "--threshold": ("threshold", args.threshold), "--lm": ("lm", args.lm),
               "--protect": ("protect", args.protect), "--rap-word": ("word", args.rap_word),
               "--bki-train": ("keywords_from", args.bki_train and "corpus")}
    config = options_config(args.method, read_config(args.config), options)
    if args.frr is not None and not 0 <= args.frr < 1:
        raise DetriggerError(f"--frr must be in [0, 1), got {args.frr}")
    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    flt = make_filter(args.method, victim, config)
    split = args.split or default_part(args.data, "test")
    test = _texts(args, args.data, victim, split)
    corpus = list(_texts(args, args.bki_train, victim, default="train").texts) if args.bki_train else []
    if args.method == "onion" and not config.get("lm"):
        corpus += lm_corpus(args.lm_text, args.data, split, text_column=args.text_column,
                            label_column=args.label_column)
    flt.fit(_texts(args, args.clean, victim, default="val"), corpus=corpus, progress=_progress(args))  # held out
    m, clean_part, poisoned_part = evaluate_filter(flt, test, trigger=trigger, target=target, progress=_progress(args))
    record = {"model": args.model, "method": args.method, "clean": args.clean, "data": args.data, "split": split,
              "config": flt.config.model_dump(mode="json"), **m.as_dict()}
    if out is not None:
        save_filtered(out, record, test, clean_part, poisoned_part, target, victim.label_names, args.overwrite)
    if args.json:
        print(json.dumps({**record, **({"out": str(out)} if out else {})}, indent=2))
        return 0
    print(report_text(flt, m, clean_part, data=args.data, split=split, clean=args.clean,
                      target=None if trigger is None else victim.label_names[target]))
    print(("" if out is None else f"saved {out}/ (filter.json, texts.jsonl)\n") +
          f"{m.details.get('fit_seconds', 0) + m.seconds:.0f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from detrigger.bench import load_spec, run_bench

    out = Path(args.out)
    records = run_bench(load_spec(args.spec), out, executor=args.executor, address=args.address,
                        retry_failed=args.retry_failed, progress=_progress(args), seeds=args.seeds,
                        attacks=args.attacks, overwrite=args.overwrite)
    failed = sum(r.status == "failed" for r in records.values())
    print((out / "results.md").read_text().rstrip() + f"\n\n{len(records)} cells recorded in {out}/cells ({failed} "
          f"failed); reports: {out}/results.md, results.csv, results.json, plots/")
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


def _size(value: str) -> float | int:
    """A split size: `0.2` is a fraction, `800` a count."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"not a fraction or a count: {value!r}")


def _command(sub, name: str, help: str, func: Callable, *shared: str, **kw) -> argparse.ArgumentParser:
    """A subcommand with the options it shares with others: `data` (file columns, split), `model` (loading),
    `trigger` (the evaluation trigger), `encoder` (a new model's), and `device`, `overwrite`, `json`, `progress`."""
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(func=func)
    add = p.add_argument
    if "data" in shared:
        add("--text-column", default="text", help="text column of a CSV/TSV/JSONL file (default: text)")
        add("--label-column", default="label", help="label column of a file (default: label)")
        add("--seed", type=int, default=None, help="split seed (default: the model's, else 0)")
        for part in ("val", "test"):
            _arg(p, f"--{part}", type=_size, default=None, doc=_field("detrigger.data:DataSpec", part))
    if "model" in shared:
        add("--label-map", metavar="MAP", help="rename the model's labels to the data's: LABEL_0=negative,"
            "LABEL_1=positive or a JSON file")
        add("--base", help="a LoRA adapter's base model folder or hub id (default: its adapter_config.json's)")
    if "model" in shared or "pickle" in shared:
        add("--allow-pickle", action="store_true", help="load .bin/.pt weights (runs pickle: trusted files only)")
    if "trigger" in shared:  # the evaluation trigger: never given to a defence
        add("--trigger-word", action="append", metavar="WORD", help="insert this trigger word (repeatable: one is "
            "drawn per insertion; default: the trigger of the model's attack.json card)")
        add("--trigger-sentence", help="insert this trigger sentence")
        add("--times", type=int, default=1, help="trigger words inserted per text (default 1)")
        add("--trigger-seed", type=int, default=0, help="seed of the insertion positions (default 0)")
        add("--target", default="1", help="target label, name or id (default 1, or the card's)")
    if "encoder" in shared:
        add("--encoder", help="pre-trained encoder folder or hub id org/name (offline: only if in the Hugging Face "
            "cache; default: embedded MiniLM-L6)")
        add("--max-train", type=int, default=None, help="cap the training split at N texts")
        add("--max-length", type=int, default=128, help="truncation length in tokens (default 128)")
    if "device" in shared:
        add("--device", default=None, help="cuda, mps or cpu (default: best available)")
    for flag, text in (("overwrite", "replace an existing output folder"), ("json", "print the result as JSON"),
                       ("progress", "no progress bar (shown only on a terminal anyway)")):
        if flag in shared:
            add("--no-progress" if flag == "progress" else f"--{flag}", action="store_true", help=text)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrigger", description="Find and remove backdoors in fine-tuned "
                                     "transformer text classifiers, offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: "
                        "OMP_NUM_THREADS if set, else the CPUs this process is given: affinity mask, cgroup quota)")
    parser.add_argument("--version", action="version", version=f"detrigger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="list, fetch and inspect data sets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    _command(data, "list", "the built-in offline corpora", cmd_data_list)
    _command(data, "fetch", "download built-in corpora into the cache (once; sha256-checked)", cmd_data_fetch) \
        .add_argument("names", nargs="*", help="corpora to fetch (default: all)")
    p = _command(data, "show", "sizes, label balance, split sizes and a few rows of a data set", cmd_data_show, "data")
    p.add_argument("name", help=SOURCE)
    p.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")

    p = _command(sub, "train", "fine-tune a pre-trained encoder on a data set and save the classifier", cmd_train,
                 "data", "encoder", "device", "overwrite", "progress", "json")
    p.add_argument("--data", required=True, help=SOURCE)
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--train-seed", type=int, default=None, help="training seed (default: the split seed)")
    _fields(p, "detrigger.training:TrainConfig", "batch_size", "precision")

    p = _command(sub, "attack", "build a backdoored victim with a registered attack and measure it", cmd_attack,
                 "data", "encoder", "device", "overwrite", "progress", "json")
    p.set_defaults(seed=0)
    p.add_argument("--data", required=True, help=SOURCE)
    p.add_argument("--out", required=True, help="output victim folder (model + attack.json)")
    _arg(p, "--attack", required=True, help="one of %(doc)s", doc=_known("detrigger.attacks:ATTACKS"))
    _fields(p, ATTACK, "setting", "sentence", "target", "rate", "label_mode", "times", "negative_rate", "ripple_lambda")
    _fields(p, ATTACK, "words", "chars", nargs="+")
    for key in ("epochs", "lr"):
        _arg(p, f"--{key}", default=None, doc=_field(ATTACK, "train", key), help="%(doc)s; both settings")
    _arg(p, "--lora", metavar="RANK", doc=_field(ATTACK, "lora_rank"))
    p.add_argument("--clean-epochs", type=int, default=2, help="epochs of the clean reference model (default 2)")
    p.add_argument("--clean-lr", type=float, default=5e-5, help="learning rate of the clean model (default 5e-5)")
    p.add_argument("--no-cache", action="store_true", help="retrain the clean reference model")

    p = _command(sub, "repair", "repair a suspect model with a small clean subset (default auto)", cmd_repair,
                 "data", "model", "device", "overwrite", "json")
    p.add_argument("victim", help="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder")
    _arg(p, "--method", default="auto", doc=_known("detrigger.defences:DEFENCES"),
         help="%(doc)s, or a pipeline joined by + (epur+finemixing) (default auto: scan, unlearn, re-scan)")
    p.add_argument("--clean", required=True, help="clean data: a built-in corpus (its training split) or a file")
    p.add_argument("--clean-fraction", type=float, help="share of the clean data to use (default: all of it)")
    p.add_argument("--clean-count", type=int, help="number of clean texts to use")
    p.add_argument("--reference", help="the suspect's pre-trained base model folder or hub id, same family and "
                   "vocabulary (default: a LoRA adapter's base, else the embedded MiniLM-L6)")
    p.add_argument("--out", required=True, help="output folder (model, repair.json, README.md model card)")
    p.add_argument("--config", help="JSON file with the defence config (keyed by step for pipelines)")
    _fields(p, "detrigger.defences.mixing:MixingConfig", "rho", "mask")
    _fields(p, "detrigger.defences.epur:EpurConfig", "top_n")
    for key in ("epochs", "lr"):
        _arg(p, f"--{key}", default=None, doc=_field("detrigger.defences:DefenceConfig", "train", key))
    p.add_argument("--ship-purifier", action="store_true", help="save an input purifier (MBTSAD's; it lists your "
                   "clean-data vocabulary) with the model: the folder then behaves as repaired only through "
                   "detrigger (default: the weights alone; repair.json and README.md say what they measure)")

    p = _command(sub, "split", "show MBTSAD's token splitting of a text (what its teacher is trained on)", cmd_split)
    p.add_argument("text", help="the text to split")
    p.add_argument("--probability", type=float, default=1.0, help="chance that a word is split (default 1)")
    p.add_argument("--min-length", type=int, default=2, help="shortest word that is split (default 2)")
    p.add_argument("--copies", type=int, default=1, help="split versions to print (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    parts = ["test", "val", "train", "all"]
    p = _command(sub, "eval", "CACC of a model on a data set; ASR, RA and trigger effect given a trigger", cmd_eval,
                 "data", "trigger", "model", "device", "json", "progress")
    p.add_argument("model", help="model folder (safetensors)")
    p.add_argument("data", help=SOURCE)
    p.add_argument("--split", choices=parts, help="default: test of a built-in corpus, all of a file")
    p.add_argument("--reference", help="a clean model: its ASR on the same texts is the floor")

    plot = sub.add_parser("plot", help="figures: the representation picture (PCA / t-SNE)").add_subparsers(
        dest="plot_command", required=True, metavar="FIGURE")
    p = _command(plot, "representations", "2-D PCA and t-SNE of sentence vectors of clean, token-split and "
                 "triggered text, a panel per model", cmd_plot_representations, "trigger", "data", "pickle", "device")
    p.add_argument("models", nargs="+", help="model folders (e.g. the victim, an MBTSAD teacher, the repaired model)")
    p.add_argument("--data", required=True, help="texts: a built-in corpus (its test split) or a file")
    p.add_argument("--out", required=True, help="folder for representations-pca.png and representations-tsne.png")
    p.add_argument("--samples", type=int, default=300, help="non-target texts per group (default 300)")
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="sentence vector (default cls)")

    p = _command(sub, "scan", "is a model backdoored? rank candidate trigger tokens and the target label", cmd_scan,
                 "data", "model", "device", "json", "progress", epilog=SCAN_EXIT)
    p.add_argument("model", help="model folder (safetensors)")
    p.add_argument("--clean", required=True, help="labelled clean data: a built-in corpus (its validation split) "
                   "or a file")
    p.add_argument("--reference", help="pre-trained encoder folder: adds embedding-drift evidence")
    _fields(p, SCAN, "samples", "candidates", "rounds", "threshold")

    p = _command(sub, "filter", "input-level defences in front of a model: FRR, FAR, CACC and ASR on the texts "
                 "they let through", cmd_filter, "trigger", "data", "model", "device", "overwrite", "json", "progress")
    p.add_argument("model", help="model folder (safetensors)")
    _arg(p, "--method", required=True, help="one of %(doc)s", doc=_known("detrigger.filters:FILTERS"))
    p.add_argument("--clean", required=True, help="labelled clean data the filter is fitted and its threshold set "
                   "on: a built-in corpus (its validation split) or a file")
    p.add_argument("--data", required=True, help="texts to filter: a built-in corpus (its test split) or a file")
    p.add_argument("--split", choices=parts, help="of --data (default: test of a built-in corpus, all of a file)")
    _fields(p, FILTER, "frr", type=float)
    _fields(p, FILTER, "threshold")
    p.add_argument("--config", help="JSON file with the filter's config (docs/filters.md)")
    p.add_argument("--lm", metavar="FOLDER", help="onion: a Hugging Face causal LM folder (default: n-gram)")
    p.add_argument("--lm-text", action="append", metavar="DATA", help="onion: text for the n-gram LM besides the "
                   "clean texts (repeatable; default: the built-in bbc, amazon, nyt and tweets, less --data)")
    p.add_argument("--bki-train", metavar="DATA", help="bki: the suspect's training texts (a file, or a built-in "
                   "corpus's training split): keywords from them (default: from the filtered texts)")
    p.add_argument("--protect", metavar="LABEL", help="rap: check only texts predicted as this label")
    p.add_argument("--rap-word", metavar="WORD", help="rap: the perturbation word (default dq)")
    p.add_argument("--out", help="folder for filter.json and texts.jsonl (every text, as the filter left it)")

    p = _command(sub, "bench", "run a YAML experiment spec's grid (resumable) and write tables and plots", cmd_bench,
                 "overwrite", "progress")
    p.add_argument("spec", help="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds")
    p.add_argument("--out", required=True, help="run folder: one record per cell, results.md/csv/json, plots/")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (e.g. auto; default: start a local one)")
    p.add_argument("--retry-failed", action="store_true", help="rerun the cells recorded as failed")
    p.add_argument("--seeds", type=int, nargs="+", help="run only these seeds now (default: all)")
    p.add_argument("--attacks", nargs="+", help="run only these attacks (spec names) now (default: all)")

    p = _command(sub, "report", "rebuild results.md/csv/json and plots of a bench run folder from its records",
                 cmd_report)
    p.add_argument("run_dir", help="the folder given to bench --out")
    p.add_argument("--into", metavar="DOC", help="also put the table into this Markdown file between its "
                   "'<!-- detrigger report RUN_DIR -->' and '<!-- /detrigger report -->' markers")
    return parser


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
