"""The `detrigger` command line: parses, calls the library, prints. Bad input exits with code 2.

A command's options are added once it is chosen (`_Commands`), after `--threads` has set torch's thread count:
most are made from the fields of the config models that own them (`argfields.add_fields`: flag, type, choices,
help and default from the field), and pydantic checks the values when the command builds its config from them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from detrigger import __version__
from detrigger.argfields import add_fields, add_recipe, given, typed
from detrigger.cpus import thread_env
from detrigger.errors import DetriggerError

log = logging.getLogger("detrigger")


def _print(lines: Iterable[str]) -> int:
    sys.stdout.writelines(f"{line}\n" for line in lines)
    return 0


def _load(args: argparse.Namespace, name: str):
    """A model folder, hub id or LoRA adapter (merged into its base), labels renamed by --label-map, on --device."""
    import detrigger.defences  # noqa: F401  (the input transforms a repaired model may ship)
    from detrigger.models import LoadOptions

    return typed(LoadOptions, args).load(name, args.device)


def _trigger(args: argparse.Namespace, model: str, victim):
    """The evaluation trigger and target: the options', else the model's attack card's. Never a defence's."""
    from detrigger.attacks import evaluation_trigger
    from detrigger.triggers import TriggerOptions

    return evaluation_trigger(model, victim.label_names, typed(TriggerOptions, args))


def _out(args: argparse.Namespace) -> Path:
    """The output folder, refused now if it exists without --overwrite (before minutes of work)."""
    from detrigger.io import check_output_dir

    check_output_dir(Path(args.out), args.overwrite)
    return Path(args.out)


def _recipe(args: argparse.Namespace) -> dict:
    """The training recipe's --epochs, --lr and --device given: overrides of an attack's or defence's recipe."""
    return {k: v for k in ("epochs", "lr", "device") if (v := getattr(args, k)) is not None}


def _show(args: argparse.Namespace, record: dict, text: str, out: Path | None = None) -> int:
    """A command's result: `text`, or with --json its `record` and the folder `out` it saved, with the files."""
    saved = {"out": str(out), "files": sorted(p.name for p in out.iterdir())} if out is not None else {}
    print(json.dumps({**record, **saved}, indent=2) if args.json else text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detrigger.data import data_spec, load_splits
    from detrigger.models import EncoderOptions
    from detrigger.training import TrainConfig
    from detrigger.training.recipe import TrainOptions, train_classifier

    o, out = typed(TrainOptions, args), _out(args)
    spec = data_spec(o.data, **given(args, "DataSpec"))
    config = typed(TrainConfig, args, epochs=o.epochs, lr=o.lr, device=args.device,
                   seed=spec.seed if o.train_seed is None else o.train_seed)
    splits = load_splits(spec)
    if not args.json:
        print(f"data {spec.source}: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    return _show(args, *train_classifier(spec, config, out, overwrite=args.overwrite, progress=args.progress,
                                         splits=splits, **typed(EncoderOptions, args).model_dump()), out)


def cmd_attack(args: argparse.Namespace) -> int:
    from detrigger.attacks import attack_spec, build_victim
    from detrigger.attacks.attack import BuildOptions
    from detrigger.data import data_spec
    from detrigger.models import EncoderOptions

    build, out = typed(BuildOptions, args), _out(args)
    spec = attack_spec({**given(args, "AttackSpec"), "seed": args.seed}, _recipe(args))
    data = data_spec(build.data, **given(args, "DataSpec"))
    result = build_victim(data, spec, clean_config=build.clean_config(args.seed, args.device), cache=not build.no_cache,
                          progress=args.progress, **typed(EncoderOptions, args).model_dump())
    return _show(args, result.record(), result.save(out, args.overwrite), out)


def cmd_repair(args: argparse.Namespace) -> int:
    from detrigger.defences.base import RepairOptions

    o, out = typed(RepairOptions, args), _out(args)
    config = o.step_config({"rho": args.rho, "mask": args.mask, "top_n": args.top_n, "seed": args.seed}, _recipe(args))
    return _show(args, *o.run(_load(args, o.victim), config, overwrite=args.overwrite,
                              say=None if args.json else print, **given(args, "DataSpec")), out)


def cmd_eval(args: argparse.Namespace) -> int:
    from detrigger.evaluation.run import EvalOptions

    o = typed(EvalOptions, args)
    victim = _load(args, o.model)
    return _show(args, *o.run(victim, *_trigger(args, o.model, victim), allow_pickle=bool(args.allow_pickle),
                              progress=args.progress, **given(args, "DataSpec")))


def cmd_plot_representations(args: argparse.Namespace) -> int:
    from detrigger.defences.distillation import split_text
    from detrigger.evaluation.representations import PictureOptions, draw_picture

    o = typed(PictureOptions, args)
    models = {Path(folder).name: _load(args, folder) for folder in o.models}
    first = next(iter(models.values()))
    written = draw_picture(models, first.texts(o.data, **given(args, "DataSpec")), *_trigger(args, o.models[0], first),
                           split_text, o, args.seed or 0)
    return _print(f"wrote {path}" for path in written)


def cmd_scan(args: argparse.Namespace) -> int:
    """Exit status 0 / 1 / 2 (the `scan` command's epilog), so a pipeline can gate on it; a crash is 2 (`main`)."""
    from detrigger.scan import ScanConfig, ScanOptions, scan

    o, config = typed(ScanOptions, args), typed(ScanConfig, args)
    victim = _load(args, o.model)
    report = scan(victim, victim.texts(o.clean, default="val", **given(args, "DataSpec")), reference=o.reference,
                  config=config, progress=args.progress)  # the held-out split
    _show(args, report.as_dict(), report.text())
    return 1 if report.verdict == "backdoored" else 0


def cmd_filter(args: argparse.Namespace) -> int:
    """An input-level defence in front of the model (`run_filter`); a bad option fails before the model loads."""
    from detrigger.filters import FilterOptions, run_filter

    options = typed(FilterOptions, args)
    config = options.filter_config()
    if options.out:
        _out(args)
    victim = _load(args, options.model)
    return _show(args, *run_filter(victim, options, config, *_trigger(args, options.model, victim),
                                   overwrite=args.overwrite, progress=args.progress, **given(args, "DataSpec")))


def cmd_bench(args: argparse.Namespace) -> int:
    from detrigger.bench import load_spec, run_bench
    from detrigger.bench.report import run_text
    from detrigger.bench.spec import RunOptions

    o = typed(RunOptions, args)
    records = run_bench(load_spec(o.spec), o.out, **o.model_dump(exclude={"spec", "out"}), progress=args.progress,
                        overwrite=args.overwrite)
    print(run_text(records, Path(o.out)))
    return 1 if any(r.status == "failed" for r in records.values()) else 0


class _Commands(argparse._SubParsersAction):
    """The commands: the one chosen gets its options (`_options`) once --threads has set torch's thread count, as
    the config models they are made from load torch; `detrigger --help` loads none."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
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
             ("data", "model", "device", "json", "progress"),
             {"epilog": "exit status: 0 no evidence of a backdoor, 1 flagged as backdoored, 2 error (as clamscan's)"}),
    "filter": ("input-level defences in front of a model: FRR, FAR, CACC and ASR on the texts they let through",
               cmd_filter, ("trigger", "data", "model", "device", "overwrite", "json", "progress")),
    "bench": ("run a YAML experiment spec's grid (resumable) and write tables and plots", cmd_bench,
              ("overwrite", "progress")),
    "report": ("rebuild results.md/csv/json and plots of a bench run folder from its records", None, ()),
}


def _shared(p: argparse.ArgumentParser, *shared: str) -> argparse.ArgumentParser:
    """The options a command shares with others: `data` (file columns, split), `model` (loading), `trigger` (the
    evaluation trigger), `encoder` (a new model's), and `device`, `overwrite`, `json`, `progress`."""
    from detrigger.data import DataSpec
    from detrigger.triggers import TriggerOptions

    add = p.add_argument
    if "data" in shared:
        add_fields(p, DataSpec, "text_column", "label_column", "seed", "val", "test")
    if "model" in shared or "pickle" in shared:  # pickle: --allow-pickle alone
        from detrigger.models import LoadOptions

        add_fields(p, LoadOptions, *(("label_map", "base", "allow_pickle") if "model" in shared else ("allow_pickle",)))
    if "trigger" in shared:  # the evaluation trigger: never given to a defence
        add_fields(p, TriggerOptions)
    if "encoder" in shared:
        from detrigger.models import EncoderOptions

        add_fields(p, EncoderOptions)
        add_fields(p, DataSpec, "max_train")
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
    _shared(p, *COMMANDS[command][2])
    if command == "data":
        from detrigger.data import SOURCE, corpora_table, data_spec, describe, fetch_corpora

        data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
        data.add_parser("list", help="the built-in offline corpora").set_defaults(
            func=lambda a: _print([corpora_table()]))
        fetch = data.add_parser("fetch", help="download built-in corpora into the cache (once; sha256-checked)")
        fetch.set_defaults(func=lambda a: _print(fetch_corpora(a.names)))
        fetch.add_argument("names", nargs="*", help="corpora to fetch (default: all)")
        show = _shared(data.add_parser("show", help="sizes, label balance, split sizes and a few rows of a data set"),
                       "data")
        show.set_defaults(func=lambda a: _print([describe(data_spec(a.name, **given(a, "DataSpec")), a.rows)]))
        show.add_argument("name", help=SOURCE)
        show.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    elif command == "train":
        from detrigger.training import TrainConfig
        from detrigger.training.recipe import TrainOptions

        add_fields(p, TrainOptions)
        add_fields(p, TrainConfig, "batch_size", "precision")
    elif command == "attack":
        from detrigger.attacks import ATTACKS, AttackSpec
        from detrigger.attacks.attack import BuildOptions

        p.set_defaults(seed=0)
        add_fields(p, BuildOptions, "data", "out")
        add_fields(p, AttackSpec, "attack", help="one of " + ", ".join(ATTACKS))
        add_fields(p, AttackSpec, "setting", "sentence", "sentence_within", "target", "rate", "label_mode", "times",
                   "per_words", "negative_rate",
                   "ripple_lambda", "words", "chars")
        add_recipe(p, AttackSpec, help="{}; both settings")
        add_fields(p, AttackSpec, "lora_rank", flag="--lora", metavar="RANK")
        add_fields(p, BuildOptions)
    elif command == "repair":
        from detrigger.defences import DEFENCES, DefenceConfig
        from detrigger.defences.base import RepairOptions
        from detrigger.defences.epur import EpurConfig
        from detrigger.defences.mixing import MixingConfig

        add_fields(p, RepairOptions, "victim")
        add_fields(p, RepairOptions, "method", help=f"{', '.join(DEFENCES)}, or a pipeline joined by + "
                   "(epur+finemixing) (default auto: scan, unlearn, re-scan)")
        add_fields(p, RepairOptions, "clean", "clean_fraction", "clean_count", "reference", "out", "config")
        add_fields(p, MixingConfig, "rho", "mask")
        add_fields(p, EpurConfig, "top_n")
        add_recipe(p, DefenceConfig)
        add_fields(p, RepairOptions, "ship_purifier")
    elif command == "split":
        from detrigger.defences.distillation import SplitOptions

        p.set_defaults(func=lambda a: _print(typed(SplitOptions, a).splits()))
        add_fields(p, SplitOptions)
    elif command == "eval":
        from detrigger.evaluation.run import EvalOptions

        add_fields(p, EvalOptions)
    elif command == "plot":
        from detrigger.evaluation.representations import PictureOptions

        plot = p.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
        p = _shared(plot.add_parser("representations", help="2-D PCA and t-SNE of sentence vectors of clean, "
                                    "token-split and triggered text, a panel per model"),
                    "trigger", "data", "pickle", "device")
        p.set_defaults(func=cmd_plot_representations)
        add_fields(p, PictureOptions)
    elif command == "scan":
        from detrigger.scan import ScanConfig, ScanOptions

        add_fields(p, ScanOptions)
        add_fields(p, ScanConfig, "samples", "candidates", "rounds", "lexicon_words", "phrase_words",
                   "combination_words", "verify_floor", "threshold")
    elif command == "filter":
        from detrigger.filters import FILTERS, FilterOptions

        add_fields(p, FilterOptions, "model")
        add_fields(p, FilterOptions, "method", help="one of " + ", ".join(FILTERS))
        add_fields(p, FilterOptions)
    elif command == "bench":
        from detrigger.bench.spec import RunOptions

        add_fields(p, RunOptions)
    elif command == "report":
        from detrigger.bench.report import ReportOptions

        p.set_defaults(func=lambda a: _print([typed(ReportOptions, a).run()]))
        add_fields(p, ReportOptions)


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
    except Exception:  # a crash: 2 like any error, never a scan's verdict (1)
        log.exception("internal error (a bug: please report it with this traceback)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
