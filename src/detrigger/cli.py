"""The `detrigger` command line: parses, calls the library, prints. Bad input exits with code 2.

A command's options are added once it is chosen (`_Commands`), after `--threads` has set torch's thread count:
most are made from the fields of the config models that own them (`_fields`: flag, type, choices, help and
default from the field), and pydantic checks the values when the command builds its config from them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from detrigger import __version__
from detrigger.cpus import thread_env
from detrigger.errors import DetriggerError, invalid

log = logging.getLogger("detrigger")
SCAN_EXIT = "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error (the clamscan convention)"
SOURCE = "a built-in corpus, a file, a saved HF folder or hf:NAME"
PARTS = ["test", "val", "train", "all"]


def _size(value: str) -> float | int:
    """A split size: `0.2` is a fraction, `800` a count."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"not a fraction or a count: {value!r}")


def _kind(annotation) -> dict:
    """How argparse reads a field of this type: a switch (bool), the values after the flag (tuple), the flag
    repeated (list), one of its choices (Literal), a number (a split size for `float | int`)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return {"type": _size} if set(args) == {int, float} else _kind(args[0])
    if origin in (tuple, list):
        return ({"nargs": "+"} if origin is tuple else {"action": "append"}) | _kind(args[0])
    if origin is Literal:
        return {"choices": args}
    if annotation is bool:
        return {"action": "store_true"}
    return {"type": annotation} if annotation in (int, float) else {}


def _fields(p: argparse.ArgumentParser, model: type, *names: str, flag: str | None = None, help: str = "{}",
            **kw) -> None:
    """An option per field of a config model (every field if none is named), `--field-name` (or `flag`): its kind
    from the type, its metavar from the title, its help (`help` with `{}` for it) from the description and the
    default; not given: None, the field's default; one made already is left. The parser records the fields it made,
    which `_given` reads."""
    made = p.get_default("fields") or {}
    names = [n for n in names or model.model_fields if n not in made.get(model.__name__, ())]
    for name in names:
        info = model.model_fields[name]
        default = None if info.is_required() or info.default is False else info.default
        value = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = info.description if value is None else f"{info.description} (default {value})"
        kind = _kind(info.annotation) | ({"metavar": info.title} if info.title else {}) | kw
        p.add_argument(flag or "--" + name.replace("_", "-"), dest=name, default=None, required=info.is_required(),
                       help=help.format(text).replace("%", "%%"), **kind)
    p.set_defaults(fields={**made, model.__name__: (*made.get(model.__name__, ()), *names)})


def _recipe(p: argparse.ArgumentParser, model: type, help: str = "{}") -> None:
    """--epochs and --lr: those of the training recipe (`train`) of a config model, its default's."""
    info = model.model_fields["train"]
    for key in ("epochs", "lr"):
        field = type(info.default).model_fields[key]
        text = f"{field.description}, {info.description} (default {getattr(info.default, key)})"
        p.add_argument(f"--{key}", default=None, help=help.format(text), **_kind(field.annotation))


def _given(args: argparse.Namespace, model: str) -> dict:
    """The options `_fields` made from the fields of the model named `model` that were given."""
    return {k: v for k in getattr(args, "fields", {}).get(model, ()) if (v := getattr(args, k)) is not None}


def _typed(model: type, args: argparse.Namespace | None = None, **fields):
    """A config from the options given for its fields and `fields` (None: its default); one DetriggerError
    naming a bad field."""
    try:
        given = _given(args, model.__name__) if args else {}
        return model(**given, **{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise DetriggerError(invalid(exc)) from None


def _print(lines: Iterable[str]) -> int:
    for line in lines:
        print(line)
    return 0


def _texts(args: argparse.Namespace, source: str, victim, part: str | None = None, default: str = "test"):
    """Labelled texts of `source` on the model's labels: `part`, else `default` of a built-in corpus and all of
    a file, split as recorded with the model."""
    from detrigger.data import default_part, load_part

    return load_part(source, part or default_part(source, default), label_names=victim.label_names,
                     recorded=victim.info.get("data"), **_given(args, "DataSpec"))


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
    from detrigger.triggers import TriggerOptions

    return evaluation_trigger(model, victim.label_names, _typed(TriggerOptions, args))


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


def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, load_splits
    from detrigger.training import TrainConfig
    from detrigger.training.recipe import train_classifier, trained_text

    out = _out(args)
    spec = data_spec(args.data, **_given(args, "DataSpec"))
    config = _typed(TrainConfig, args, epochs=args.epochs, lr=args.lr, device=args.device,
                    seed=spec.seed if args.train_seed is None else args.train_seed)
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    record = train_classifier(spec, config, out, overwrite=args.overwrite, encoder=args.encoder,
                              max_length=args.max_length, progress=args.progress, splits=splits)
    return _show(args, record, trained_text(record, out), out)


def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import attack_spec, build_victim
    from detrigger.attacks.attack import BuildOptions
    from detrigger.data import data_spec

    out = _out(args)
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    spec = attack_spec({**_given(args, "AttackSpec"), "seed": args.seed}, train)
    data, build = data_spec(args.data, **_given(args, "DataSpec")), _typed(BuildOptions, args)
    result = build_victim(data, spec, clean_config=build.clean_config(args.seed, args.device), encoder=args.encoder,
                          max_length=args.max_length, cache=not build.no_cache, progress=args.progress)
    text = result.save(out, args.overwrite)
    return _show(args, result.record(), text, out)


def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.defences import defender_clean, repair
    from detrigger.defences.base import RepairOptions

    o, out = _typed(RepairOptions, args), _out(args)
    train = {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}
    config = o.step_config({"rho": args.rho, "mask": args.mask, "top_n": args.top_n, "seed": args.seed}, train)
    victim = _load(args, args.victim)
    clean, pool = defender_clean(o, victim, **_given(args, "DataSpec"))
    if not args.json:
        print(o.clean_text(clean, pool, victim))
    result = repair(victim, clean, method=o.method, reference=o.reference, config=config,
                    clean_fraction=len(clean) / pool)
    record = result.save(out, suspect=str(Path(args.victim).resolve()), clean_data=o.clean,
                         ship_purifier=o.ship_purifier, overwrite=args.overwrite)
    return _show(args, record, result.saved_text(record, out), out)


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
                 progress=args.progress)
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
        config = _typed(ScanConfig, args)
        victim = _load(args, args.model)
        report = scan(victim, _texts(args, args.clean, victim, default="val"), reference=args.reference,
                      config=config, progress=args.progress)  # the held-out split
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
    from detrigger.filters import FilterOptions, run_filter

    options = _typed(FilterOptions, args)
    config = options.filter_config()  # a bad option fails now, before the model loads
    if options.out:
        _out(args)
    victim = _load(args, args.model)
    trigger, target = _trigger(args, args.model, victim)
    return _show(args, *run_filter(victim, options, config, model=args.model, trigger=trigger, target=target,
                                   overwrite=args.overwrite, progress=args.progress, **_given(args, "DataSpec")))


def cmd_bench(args: argparse.Namespace) -> int:
    from detrigger.bench import load_spec, run_bench
    from detrigger.bench.spec import RunOptions

    out = Path(args.out)
    records = run_bench(load_spec(args.spec), out, **_typed(RunOptions, args).model_dump(),
                        progress=args.progress, overwrite=args.overwrite)
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


class _Commands(argparse._SubParsersAction):
    """The commands: the one chosen gets its options (`_options`) once --threads has set torch's thread count, as
    the config models they are made from load torch; `detrigger --help` loads none."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if namespace.threads is not None and namespace.threads < 1:
            raise DetriggerError(f"--threads must be at least 1, got {namespace.threads}")
        thread_env(namespace.threads)
        if values[0] in self.choices:  # else argparse names the unknown command
            _options(self.choices[values[0]], values[0])
        super().__call__(parser, namespace, values, option_string)


COMMANDS = {  # name: (help, what it does, the options it shares with others (`_shared`), more parser settings)
    "data": ("list, fetch and inspect data sets", None, ()),
    "train": ("fine-tune a pre-trained encoder on a data set and save the classifier", cmd_train,
              ("data", "encoder", "device", "overwrite", "progress", "json")),
    "attack": ("build a backdoored victim with a registered attack and measure it", cmd_attack,
               ("data", "encoder", "device", "overwrite", "progress", "json")),
    "repair": ("repair a suspect model with a small clean subset (default auto)", cmd_repair,
               ("data", "model", "device", "overwrite", "json")),
    "split": ("show MBTSAD's token splitting of a text (what its teacher is trained on)", None, ()),
    "eval": ("CACC of a model on a data set; ASR, RA and trigger effect given a trigger", cmd_eval,
             ("data", "trigger", "model", "device", "json", "progress")),
    "plot": ("figures: the representation picture (PCA / t-SNE)", None, ()),
    "scan": ("is a model backdoored? rank candidate trigger tokens and the target label", cmd_scan,
             ("data", "model", "device", "json", "progress"), {"epilog": SCAN_EXIT}),
    "filter": ("input-level defences in front of a model: FRR, FAR, CACC and ASR on the texts they let through",
               cmd_filter, ("trigger", "data", "model", "device", "overwrite", "json", "progress")),
    "bench": ("run a YAML experiment spec's grid (resumable) and write tables and plots", cmd_bench,
              ("overwrite", "progress")),
    "report": ("rebuild results.md/csv/json and plots of a bench run folder from its records", cmd_report, ()),
}


def _shared(p: argparse.ArgumentParser, *shared: str) -> argparse.ArgumentParser:
    """The options a command shares with others: `data` (file columns, split), `model` (loading), `trigger` (the
    evaluation trigger), `encoder` (a new model's), and `device`, `overwrite`, `json`, `progress`."""
    from detrigger.data import DataSpec
    from detrigger.triggers import TriggerOptions

    add = p.add_argument
    if "data" in shared:
        _fields(p, DataSpec, "text_column", "label_column", "seed", "val", "test")
    if "model" in shared:
        add("--label-map", metavar="MAP", help="rename the model's labels to the data's: LABEL_0=negative,"
            "LABEL_1=positive or a JSON file")
        add("--base", help="a LoRA adapter's base model folder or hub id (default: its adapter_config.json's)")
    if "model" in shared or "pickle" in shared:
        add("--allow-pickle", action="store_true", help="load .bin/.pt weights (runs pickle: trusted files only)")
    if "trigger" in shared:  # the evaluation trigger: never given to a defence
        _fields(p, TriggerOptions)
    if "encoder" in shared:
        add("--encoder", help="pre-trained encoder folder or hub id org/name (offline: only if in the Hugging Face "
            "cache; default: embedded MiniLM-L6)")
        _fields(p, DataSpec, "max_train")
        add("--max-length", type=int, default=128, help="truncation length in tokens (default 128)")
    if "device" in shared:
        add("--device", default=None, help="cuda, mps or cpu (default: best available)")
    for flag, text in (("overwrite", "replace an existing output folder"), ("json", "print the result as JSON")):
        if flag in shared:
            add(f"--{flag}", action="store_true", help=text)
    if "progress" in shared:  # args.progress: False, or None (shown on a terminal)
        add("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar (shown only on "
            "a terminal anyway)")
    return p


def _options(p: argparse.ArgumentParser, command: str) -> None:
    """The options of `command` (its parser `p`), its shared ones first."""
    add = _shared(p, *COMMANDS[command][2]).add_argument
    if command == "data":
        from detrigger.data import corpora_table, data_spec, describe, fetch_corpora

        data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
        data.add_parser("list", help="the built-in offline corpora").set_defaults(
            func=lambda a: _print([corpora_table()]))
        fetch = data.add_parser("fetch", help="download built-in corpora into the cache (once; sha256-checked)")
        fetch.set_defaults(func=lambda a: _print(fetch_corpora(a.names)))
        fetch.add_argument("names", nargs="*", help="corpora to fetch (default: all)")
        show = _shared(data.add_parser("show", help="sizes, label balance, split sizes and a few rows of a data set"),
                       "data")
        show.set_defaults(func=lambda a: _print([describe(data_spec(a.name, **_given(a, "DataSpec")), a.rows)]))
        show.add_argument("name", help=SOURCE)
        show.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    elif command == "train":
        from detrigger.training import TrainConfig

        add("--data", required=True, help=SOURCE)
        add("--out", required=True, help="output model folder (written atomically)")
        add("--epochs", type=int, default=2, help="epochs (default 2)")
        add("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
        add("--train-seed", type=int, default=None, help="training seed (default: the split seed)")
        _fields(p, TrainConfig, "batch_size", "precision")
    elif command == "attack":
        from detrigger.attacks import ATTACKS, AttackSpec
        from detrigger.attacks.attack import BuildOptions

        p.set_defaults(seed=0)
        add("--data", required=True, help=SOURCE)
        add("--out", required=True, help="output victim folder (model + attack.json)")
        _fields(p, AttackSpec, "attack", help="one of " + ", ".join(ATTACKS))
        _fields(p, AttackSpec, "setting", "sentence", "target", "rate", "label_mode", "times", "negative_rate",
                "ripple_lambda", "words", "chars")
        _recipe(p, AttackSpec, help="{}; both settings")
        _fields(p, AttackSpec, "lora_rank", flag="--lora", metavar="RANK")
        _fields(p, BuildOptions)
    elif command == "repair":
        from detrigger.defences import DEFENCES, DefenceConfig
        from detrigger.defences.base import RepairOptions
        from detrigger.defences.epur import EpurConfig
        from detrigger.defences.mixing import MixingConfig

        add("victim", help="suspect model folder (safetensors), hub id (org/name) or LoRA adapter folder")
        _fields(p, RepairOptions, "method", help=f"{', '.join(DEFENCES)}, or a pipeline joined by + (epur+finemixing) "
                "(default auto: scan, unlearn, re-scan)")
        _fields(p, RepairOptions, "clean", "clean_fraction", "clean_count", "reference", "out", "config")
        _fields(p, MixingConfig, "rho", "mask")
        _fields(p, EpurConfig, "top_n")
        _recipe(p, DefenceConfig)
        _fields(p, RepairOptions, "ship_purifier")
    elif command == "split":
        from detrigger.defences.distillation import split_copies

        p.set_defaults(func=lambda a: _print(split_copies(a.text, a.copies, probability=a.probability,
                                                          min_length=a.min_length, seed=a.seed)))
        add("text", help="the text to split")
        add("--probability", type=float, default=1.0, help="chance that a word is split (default 1)")
        add("--min-length", type=int, default=2, help="shortest word that is split (default 2)")
        add("--copies", type=int, default=1, help="split versions to print (default 1)")
        add("--seed", type=int, default=0, help="seed (default 0)")
    elif command == "eval":
        add("model", help="model folder (safetensors)")
        add("data", help=SOURCE)
        add("--split", choices=PARTS, help="default: test of a built-in corpus, all of a file")
        add("--reference", help="a clean model: its ASR on the same texts is the floor")
    elif command == "plot":
        plot = p.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
        p = _shared(plot.add_parser("representations", help="2-D PCA and t-SNE of sentence vectors of clean, "
                                    "token-split and triggered text, a panel per model"),
                    "trigger", "data", "pickle", "device")
        p.set_defaults(func=cmd_plot_representations)
        p.add_argument("models", nargs="+", help="model folders (e.g. the victim, an MBTSAD teacher, the repaired "
                       "model)")
        p.add_argument("--data", required=True, help="texts: a built-in corpus (its test split) or a file")
        p.add_argument("--out", required=True, help="folder for representations-pca.png and representations-tsne.png")
        p.add_argument("--samples", type=int, default=300, help="non-target texts per group (default 300)")
        p.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="sentence vector (default cls)")
    elif command == "scan":
        from detrigger.scan import ScanConfig

        add("model", help="model folder (safetensors)")
        add("--clean", required=True, help="labelled clean data: a built-in corpus (its validation split) or a file")
        add("--reference", help="pre-trained encoder folder: adds embedding-drift evidence")
        _fields(p, ScanConfig, "samples", "candidates", "rounds", "threshold")
    elif command == "filter":
        from detrigger.filters import FILTERS, FilterOptions

        add("model", help="model folder (safetensors)")
        _fields(p, FilterOptions, "method", help="one of " + ", ".join(FILTERS))
        _fields(p, FilterOptions)
    elif command == "bench":
        from detrigger.bench.spec import RunOptions

        add("spec", help="experiment spec (YAML): data, attacks, defences, clean_fractions, seeds")
        add("--out", required=True, help="run folder: one record per cell, results.md/csv/json, plots/")
        _fields(p, RunOptions)
    elif command == "report":
        add("run_dir", help="the folder given to bench --out")
        add("--into", metavar="DOC", help="also put the table into this Markdown file between its "
            "'<!-- detrigger report RUN_DIR -->' and '<!-- /detrigger report -->' markers")


def build_parser() -> argparse.ArgumentParser:
    """The commands and their help lines; a command's options come when it is chosen (`_Commands`)."""
    parser = argparse.ArgumentParser(prog="detrigger", description="Find and remove backdoors in fine-tuned "
                                     "transformer text classifiers, offline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: "
                        "OMP_NUM_THREADS if set, else the CPUs this process is given: affinity mask, cgroup quota)")
    parser.add_argument("--version", action="version", version=f"detrigger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands)
    for name, (help, func, _, *kw) in COMMANDS.items():
        sub.add_parser(name, help=help, **(kw[0] if kw else {})).set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        args = build_parser().parse_args(argv)  # --threads is applied as the command is chosen (_Commands)
        log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        return args.func(args)
    except DetriggerError as exc:
        print(f"detrigger: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detrigger: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
