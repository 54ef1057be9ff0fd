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
DATA, TRAIN, ATTACK = "detrigger.data:DataSpec", "detrigger.training:TrainConfig", "detrigger.attacks:AttackSpec"
SCAN, FILTER, RAP = "detrigger.scan:ScanConfig", "detrigger.filters:FilterConfig", "detrigger.filters.rap:RapConfig"
# the AttackSpec fields `detrigger attack` sets by an option of the same name (and --words, --chars, --lora)
ATTACK_FIELDS = ("setting", "sentence", "target", "rate", "label_mode", "times", "negative_rate", "ripple_lambda")
PARTS = ["test", "val", "train", "all"]


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
    """An option per config field, `--field-name` (not given: None, the field's default), its help from the field."""
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


def _out(args: argparse.Namespace) -> Path:
    """The output folder, refused now if it exists without --overwrite (before minutes of work)."""
    from detrigger.io import check_output_dir

    check_output_dir(Path(args.out), args.overwrite)
    return Path(args.out)


def _show(args: argparse.Namespace, record: dict, text: str, out: Path | None = None) -> int:
    """A command's result: `text`, or with --json its `record` and the folder `out` it saved, with the files."""
    saved = {"out": str(out), "files": sorted(p.name for p in out.iterdir())} if out is not None else {}
    print(json.dumps({**record, **saved}, indent=2) if args.json else text)
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from detrigger.data import corpora_table

    print(corpora_table())
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from detrigger.data import fetch_corpora

    for line in fetch_corpora(args.names):
        print(line)
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, describe

    print(describe(data_spec(args.name, **_data(args)), args.rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, load_splits
    from detrigger.training import TrainConfig
    from detrigger.training.recipe import train_classifier, trained_text

    out = _out(args)
    spec = data_spec(args.data, **_data(args))
    config = _typed(TrainConfig, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                    precision=args.precision, seed=spec.seed if args.train_seed is None else args.train_seed)
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    record = train_classifier(spec, config, out, overwrite=args.overwrite, encoder=args.encoder,
                              max_length=args.max_length, progress=_progress(args), splits=splits)
    return _show(args, record, trained_text(record, out), out)


def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import CARD_FILE, attack_spec, build_victim
    from detrigger.data import data_spec
    from detrigger.training import TrainConfig

    out = _out(args)
    given = {k: getattr(args, k) for k in ("attack", "seed", "words", "chars", *ATTACK_FIELDS)}
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    spec = attack_spec({**given, "lora_rank": args.lora}, train)
    clean = _typed(TrainConfig, epochs=args.clean_epochs, lr=args.clean_lr, seed=args.seed, device=args.device)
    result = build_victim(data_spec(args.data, **_data(args)), spec, clean_config=clean, encoder=args.encoder,
                          max_length=args.max_length, cache=not args.no_cache, progress=_progress(args))
    result.victim.save(out, args.overwrite, {CARD_FILE: result.card})
    weights = "adapter_model.safetensors: a LoRA adapter" if spec.lora_rank else "model.safetensors"
    text = f"{result.text()}\nsaved {out}/ ({weights}, {CARD_FILE}) in {result.card['wall_seconds']:.0f} s"
    return _show(args, {**result.card, "target_label": result.victim.label_names[spec.target]}, text, out)


def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.defences import defender_clean, options_config, repair
    from detrigger.io import read_config

    out = _out(args)
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
    return _show(args, record, result.saved_text(record, out), out)


def cmd_split(args: argparse.Namespace) -> int:
    from detrigger.defences.distillation import split_copies

    print("\n".join(split_copies(args.text, args.copies, probability=args.probability, min_length=args.min_length,
                                 seed=args.seed)))
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
    text = f"{args.model} on {args.data} ({split}, {m.n_test} texts)\n{m.text(victim.label_names)}"
    return _show(args, {"model": args.model, "data": args.data, "split": split, **m.as_dict()}, text)


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
    _show(args, report.as_dict(), report.text())
    return 1 if report.verdict == "backdoored" else 0


def cmd_filter(args: argparse.Namespace) -> int:
    """An input-level defence in front of the model: fitted on --clean (threshold at --frr), applied to --data;
    FRR and CACC, and with a trigger (options or the attack card: evaluation only) FAR and ASR."""
    from detrigger.data import data_spec, default_part
    from detrigger.filters import evaluate_filter, make_filter, options_config, report_text, save_filtered
    from detrigger.filters.onion import lm_corpus
    from detrigger.io import read_config

    options = {"--frr": ("frr", args.frr), "--threshold": ("threshold", args.threshold), "--lm": ("lm", args.lm),
               "--protect": ("protect", args.protect), "--rap-word": ("word", args.rap_word),
               "--bki-train": ("keywords_from", args.bki_train and "corpus")}
    config = options_config(args.method, read_config(args.config), options)
    out = _out(args) if args.out else None
    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    flt = make_filter(args.method, victim, config)
    split = args.split or default_part(args.data, "test")
    test = _texts(args, args.data, victim, split)
    corpus = list(_texts(args, args.bki_train, victim, default="train").texts) if args.bki_train else []
    if args.method == "onion" and not config.get("lm"):
        columns = data_spec(args.data, **_data(args)).model_dump(include={"text_column", "label_column"})
        corpus += lm_corpus(args.lm_text, args.data, split, **columns)
    flt.fit(_texts(args, args.clean, victim, default="val"), corpus=corpus, progress=_progress(args))  # held out
    m, clean_part, poisoned_part = evaluate_filter(flt, test, trigger=trigger, target=target, progress=_progress(args))
    record = {"model": args.model, "method": args.method, "clean": args.clean, "data": args.data, "split": split,
              "config": flt.config.model_dump(mode="json"), **m.as_dict()}
    if out is not None:
        save_filtered(out, record, test, clean_part, poisoned_part, target, victim.label_names, args.overwrite)
    text = report_text(flt, m, clean_part, data=args.data, split=split, clean=args.clean, out=out,
                       target=None if trigger is None else victim.label_names[target])
    return _show(args, {**record, **({"out": str(out)} if out else {})}, text)


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


def _command(sub, name: str, help: str, func: Callable, *shared: str, **kw):
    """A subcommand and its `add_argument`, with the options it shares with others: `data` (file columns, split),
    `model` (loading), `trigger` (the evaluation trigger), `encoder` (a new model's), and `device`, `overwrite`,
    `json`, `progress`."""
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(func=func)
    add = p.add_argument
    if "data" in shared:
        _fields(p, DATA, "text_column", "label_column")
        _fields(p, DATA, "seed", type=int)
        _fields(p, DATA, "val", "test", type=_size)
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
        _fields(p, DATA, "max_train", type=int)
        add("--max-length", type=int, default=128, help="truncation length in tokens (default 128)")
    if "device" in shared:
        add("--device", default=None, help="cuda, mps or cpu (default: best available)")
    for flag, text in (("overwrite", "replace an existing output folder"), ("json", "print the result as JSON"),
                       ("progress", "no progress bar (shown only on a terminal anyway)")):
        if flag in shared:
            add("--no-progress" if flag == "progress" else f"--{flag}", action="store_true", help=text)
    return p, add


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
    _, add = _command(data, "fetch", "download built-in corpora into the cache (once; sha256-checked)", cmd_data_fetch)
    add("names", nargs="*", help="corpora to fetch (default: all)")
    _, add = _command(data, "show", "sizes, label balance, split sizes and a few rows of a data set", cmd_data_show,
                      "data")
    add("name", help=SOURCE)
    add("--rows", type=int, default=5, help="rows to print (default 5)")

    p, add = _command(sub, "train", "fine-tune a pre-trained encoder on a data set and save the classifier", cmd_train,
                      "data", "encoder", "device", "overwrite", "progress", "json")
    add("--data", required=True, help=SOURCE)
    add("--out", required=True, help="output model folder (written atomically)")
    add("--epochs", type=int, default=2, help="epochs (default 2)")
    add("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    add("--train-seed", type=int, default=None, help="training seed (default: the split seed)")
    _fields(p, TRAIN, "batch_size", "precision")

    p, add = _command(sub, "attack", "build a backdoored victim with a registered attack and measure it", cmd_attack,
                      "data", "encoder", "device", "overwrite", "progress", "json")
    p.set_defaults(seed=0)
    add("--data", required=True, help=SOURCE)
    add("--out", required=True, help="output victim folder (model + attack.json)")
    _arg(p, "--attack", required=True, help="one of %(doc)s", doc=_known("detrigger.attacks:ATTACKS"))
    _fields(p, ATTACK, *ATTACK_FIELDS)
    _fields(p, ATTACK, "words", "chars", nargs="+")
    for key in ("epochs", "lr"):
        _arg(p, f"--{key}", default=None, doc=_field(ATTACK, "train", key), help="%(doc)s; both settings")
    _arg(p, "--lora", metavar="RANK", doc=_field(ATTACK, "lora_rank"))
    add("--clean-epochs", type=int, default=2, help="epochs of the clean reference model (default 2)")
    add("--clean-lr", type=float, default=5e-5, help="learning rate of the clean model (default 5e-5)")
    add("--no-cache", action="store_true", help="retrain the clean reference model")

    p, add = _command(sub, "repair", "repair a suspect model with a small clean subset (default auto)", cmd_repair,
                      "data", "model", "device", "overwrite", "json")
    add("victim", help="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder")
    _arg(p, "--method", default="auto", doc=_known("detrigger.defences:DEFENCES"),
         help="%(doc)s, or a pipeline joined by + (epur+finemixing) (default auto: scan, unlearn, re-scan)")
    add("--clean", required=True, help="clean data: a built-in corpus (its training split) or a file")
    add("--clean-fraction", type=float, help="share of the clean data to use (default: all of it)")
    add("--clean-count", type=int, help="number of clean texts to use")
    add("--reference", help="the suspect's pre-trained base model folder or hub id, same family and vocabulary "
        "(default: a LoRA adapter's base, else the embedded MiniLM-L6)")
    add("--out", required=True, help="output folder (model, repair.json, README.md model card)")
    add("--config", help="JSON file with the defence config (keyed by step for pipelines)")
    _fields(p, "detrigger.defences.mixing:MixingConfig", "rho", "mask")
    _fields(p, "detrigger.defences.epur:EpurConfig", "top_n")
    for key in ("epochs", "lr"):
        _arg(p, f"--{key}", default=None, doc=_field("detrigger.defences:DefenceConfig", "train", key))
    add("--ship-purifier", action="store_true", help="save an input purifier (MBTSAD's; it lists your clean-data "
        "vocabulary) with the model: the folder then behaves as repaired only through detrigger (default: the "
        "weights alone; repair.json and README.md say what they measure)")

    _, add = _command(sub, "split", "show MBTSAD's token splitting of a text (what its teacher is trained on)",
                      cmd_split)
    add("text", help="the text to split")
    add("--probability", type=float, default=1.0, help="chance that a word is split (default 1)")
    add("--min-length", type=int, default=2, help="shortest word that is split (default 2)")
    add("--copies", type=int, default=1, help="split versions to print (default 1)")
    add("--seed", type=int, default=0, help="seed (default 0)")

    _, add = _command(sub, "eval", "CACC of a model on a data set; ASR, RA and trigger effect given a trigger",
                      cmd_eval, "data", "trigger", "model", "device", "json", "progress")
    add("model", help="model folder (safetensors)")
    add("data", help=SOURCE)
    add("--split", choices=PARTS, help="default: test of a built-in corpus, all of a file")
    add("--reference", help="a clean model: its ASR on the same texts is the floor")

    plot = sub.add_parser("plot", help="figures: the representation picture (PCA / t-SNE)").add_subparsers(
        dest="plot_command", required=True, metavar="FIGURE")
    _, add = _command(plot, "representations", "2-D PCA and t-SNE of sentence vectors of clean, token-split and "
                      "triggered text, a panel per model", cmd_plot_representations, "trigger", "data", "pickle",
                      "device")
    add("models", nargs="+", help="model folders (e.g. the victim, an MBTSAD teacher, the repaired model)")
    add("--data", required=True, help="texts: a built-in corpus (its test split) or a file")
    add("--out", required=True, help="folder for representations-pca.png and representations-tsne.png")
    add("--samples", type=int, default=300, help="non-target texts per group (default 300)")
    add("--pooling", choices=["cls", "mean"], default="cls", help="sentence vector (default cls)")

    p, add = _command(sub, "scan", "is a model backdoored? rank candidate trigger tokens and the target label",
                      cmd_scan, "data", "model", "device", "json", "progress", epilog=SCAN_EXIT)
    add("model", help="model folder (safetensors)")
    add("--clean", required=True, help="labelled clean data: a built-in corpus (its validation split) or a file")
    add("--reference", help="pre-trained encoder folder: adds embedding-drift evidence")
    _fields(p, SCAN, "samples", "candidates", "rounds", "threshold")

    p, add = _command(sub, "filter", "input-level defences in front of a model: FRR, FAR, CACC and ASR on the texts "
                      "they let through", cmd_filter, "trigger", "data", "model", "device", "overwrite", "json",
                      "progress")
    add("model", help="model folder (safetensors)")
    _arg(p, "--method", required=True, help="one of %(doc)s", doc=_known("detrigger.filters:FILTERS"))
    add("--clean", required=True, help="labelled clean data the filter is fitted and its threshold set on: a "
        "built-in corpus (its validation split) or a file")
    add("--data", required=True, help="texts to filter: a built-in corpus (its test split) or a file")
    add("--split", choices=PARTS, help="of --data (default: test of a built-in corpus, all of a file)")
    _fields(p, FILTER, "frr", type=float)
    _fields(p, FILTER, "threshold")
    add("--config", help="JSON file with the filter's config (docs/filters.md)")
    _arg(p, "--lm", metavar="FOLDER", doc=_field("detrigger.filters.onion:OnionConfig", "lm"), help="onion: %(doc)s")
    add("--lm-text", action="append", metavar="DATA", help="onion: text for the n-gram LM besides the clean texts "
        "(repeatable; default: the built-in bbc, amazon, nyt and tweets, less --data)")
    add("--bki-train", metavar="DATA", help="bki: the suspect's training texts (a file, or a built-in corpus's "
        "training split): keywords from them (default: from the filtered texts)")
    _arg(p, "--protect", metavar="LABEL", doc=_field(RAP, "protect"), help="rap: %(doc)s")
    _arg(p, "--rap-word", metavar="WORD", doc=_field(RAP, "word"), help="rap: %(doc)s")
    add("--out", help="folder for filter.json and texts.jsonl (every text, as the filter left it)")

    _, add = _command(sub, "bench", "run a YAML experiment spec's grid (resumable) and write tables and plots",
                      cmd_bench, "overwrite", "progress")
    add("spec", help="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds")
    add("--out", required=True, help="run folder: one record per cell, results.md/csv/json, plots/")
    add("--executor", choices=["local", "ray"], default="local", help="local (default) or ray")
    add("--address", help="Ray cluster address (e.g. auto; default: start a local one)")
    add("--retry-failed", action="store_true", help="rerun the cells recorded as failed")
    add("--seeds", type=int, nargs="+", help="run only these seeds now (default: all)")
    add("--attacks", nargs="+", help="run only these attacks (spec names) now (default: all)")

    _, add = _command(sub, "report", "rebuild results.md/csv/json and plots of a bench run folder from its records",
                      cmd_report)
    add("run_dir", help="the folder given to bench --out")
    add("--into", metavar="DOC", help="also put the table into this Markdown file between its "
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
