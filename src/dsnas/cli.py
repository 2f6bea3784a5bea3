"""Command line: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .errors import DsnasError, Preempted, RankLost, one_line
from .files import json_text


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        print(one_line(f"{self.prog}: error: {message} (see {self.prog} --help)"), file=sys.stderr)
        sys.exit(2)


def _number(kind, ok, wanted: str):
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else "expected <wanted>"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_count = _number(int, lambda v: v >= 0, "a whole number >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")  # nan fails too
_eps = _number(float, lambda v: 0 < v < 1, "a BN eps in (0, 1)")


def _device(text: str) -> str:
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=_positive_int, help="image size in pixels (default 224, or the arch file's)")
    p.add_argument("--num-classes", type=_positive_int, help="classes (default 1000, or the arch file's)")
    p.add_argument("--in-channels", type=_positive_int, help="image channels (default 3, or the arch file's)")
    p.add_argument("--width", type=_positive_float, help="channel width multiplier (default 1.0, or the arch file's)")


def _child_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run directory (holds arch.yaml and child.safetensors)")
    p.add_argument("--arch", help="architecture file (instead of --run)")
    p.add_argument("--weights", help="child weights, safetensors (instead of --run)")
    _model_limit_arg(p)


def _model_limit_arg(p: argparse.ArgumentParser) -> None:
    """--max-model-gb: the commands without a config (runs and `latency` take max_model_gb from theirs)."""
    from .config import MAX_MODEL_GB, MODEL_GB

    p.add_argument("--max-model-gb", type=_number(float, lambda v: v in MODEL_GB, f"a number {MODEL_GB}"),
                   default=MAX_MODEL_GB, metavar="GB", help="refuse a network that would take more than GB for one "
                   f"image, parameters and feature maps (default {MAX_MODEL_GB:g})")


def _resolve_settings(args, source=None) -> tuple[str, dict]:
    """The space and its settings from ``source`` (an architecture or latency table; the default
    space if None), overridden by the --input-size/--num-classes/--in-channels/--width flags given."""
    from .spaces import DEFAULT_SPACE, settings_of

    asked = getattr(args, "space", None)  # info --space
    if asked and source is not None and source.space != asked:
        raise DsnasError(f"--space {asked}: the architecture or table given is of the {source.space} space")
    name = source.space if source is not None else asked or DEFAULT_SPACE
    settings = settings_of(name, source.settings if source is not None else None)
    flags = {k: getattr(args, k) for k in ("input_size", "num_classes", "in_channels", "width")
             if getattr(args, k) is not None}
    try:
        return name, settings.replace(**flags).as_dict()
    except (TypeError, ValueError) as e:
        raise DsnasError(f"the {name} space: {e}") from None


# How each count of `info` is made (at the architecture's input size, batch 1).
COST_CONVENTIONS = {
    "mflops": "MMRazor ResourceEstimator rules (conv, BN, ReLU, pooling, linear)",
    "macs_m": "conv + linear multiply-accumulates, as the SPOS and DSNAS code count FLOPs "
              "(the DSNAS paper's 324M also counts the classifier's adds)",
}


def cmd_info(args) -> int:
    from . import spaces
    from .arch import load_arch

    if args.spaces:
        if args.arch or args.latency or args.space:
            raise DsnasError("--spaces lists every space; it takes no --arch, --latency or --space")
        return _info_spaces(args)
    arch, lut = load_arch(args.arch) if args.arch else None, None
    if args.latency:
        from .latency import load_latency

        lut = load_latency(args.latency)
    elif args.measure:
        raise DsnasError("--measure needs --latency FILE (it times the child as the table was measured)")
    # the space is the architecture's, else (no arch, or an MMRazor file, which names none) the
    # table's, else the default one; flags override it
    name, settings = _resolve_settings(args, arch if (arch is not None and arch.names_space) or lut is None else lut)
    space = spaces.build(name, settings, max_model_gb=args.max_model_gb)
    table = space.costs
    if lut is not None:
        lut.check_settings(settings, args.latency, name)
        table = table.with_latency(lut)
    if arch is not None:
        _info_arch(args, arch, space, table, lut)
    else:
        _info_space(args, space, table)
    return 0


def _info_spaces(args) -> int:
    """Every space dsnas can build (its own and installed packages'), one line each: name, where
    it comes from, and what it is."""
    from .spaces import DATA_SETTINGS, space_class, space_names

    listed = {}
    for name in space_names():
        cls = space_class(name)
        defaults = cls.Settings()
        settings = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
        listed[name] = {"description": cls.description, "module": cls.__module__,
                        "settings": {k: v for k, v in settings.items() if k not in DATA_SETTINGS}}
    if args.json:
        print(json_text(listed))
        return 0
    width = max(map(len, listed))
    for name, facts in listed.items():
        print(f"{name:<{width}}  {facts['description']} ({facts['module']})")
    return 0


def _info_arch(args, arch, space, table, lut) -> None:
    """Costs of one architecture; with ``--measure`` also its end-to-end latency on this machine."""
    settings = space.settings.as_dict()
    # MACs are whole numbers: keep every digit, so they compare with the SPOS and DSNAS code's count
    out = {**table.costs(arch.choices), "macs_m": round(table.total(arch.choices, "macs_m"), 6),
           "choices": arch.choices, "settings": settings, "conventions": COST_CONVENTIONS}
    if arch.string is not None:
        out["arch_string"] = arch.string
    if args.measure:
        from .latency import measure_network

        out["measured_ms"] = round(measure_network(space.child(arch.choices), lut.measured)["ms"], 3)
    if args.json:
        print(json_text(out))
        return
    print(f"architecture {args.arch} ({len(arch.choices)} blocks, {settings['input_size']} px, "
          f"{settings['num_classes']} classes)")
    print(f"  MFLOPs {out['mflops']:.3f}   MACs {out['macs_m']:.6f}".rstrip("0").rstrip(".")
          + f" M   params {out['params_m']:.3f} M")
    for metric in ("mflops", "macs_m"):
        print(f"    {metric}: {COST_CONVENTIONS[metric]}")
    if "arch_string" in out:
        print(f"  {out['arch_string']}")
    if "latency_ms" in out:
        measured = f"   measured {out['measured_ms']:.3f} ms" if "measured_ms" in out else ""
        print(f"  latency {out['latency_ms']:.3f} ms predicted by {args.latency}{measured}")
    for i, op in enumerate(arch.choices):
        print(f"  block {i:2d}  {op}")


def _info_space(args, space, table) -> None:
    """The whole space: blocks, candidates, and min/mean/max of every cost the table holds."""
    from .spaces import DATA_SETTINGS

    settings = space.settings.as_dict()
    bounds = {m: {k: round(v, 3) for k, v in table.bounds(m).items()} for m in table.entries}
    supernet_params = round(sum(p.numel() for p in space.parameters()) / 1e6, 3)
    ops = list(dict.fromkeys(op for names in table.names for op in names))
    out = {"space": space.name, "settings": settings, "blocks": table.num_blocks,
           "candidates": ops, "candidates_per_block": [len(n) for n in table.names],
           **bounds, "supernet_params_m": supernet_params, **space.describe()}
    if args.json:
        print(json_text(out))
        return
    print(f"{space.name} space: {table.num_blocks} blocks x {len(ops)} candidates "
          f"({', '.join(ops)}); {settings['input_size']} px, {settings['in_channels']} channels, "
          f"{settings['num_classes']} classes, "
          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items() if k not in DATA_SETTINGS))
    for key, value in space.describe().items():
        print(f"  {key.replace('_', ' ')}: {value}")
    labels = {"mflops": "MFLOPs", "macs_m": "MACs (M)", "params_m": "params (M)", "latency_ms": "latency (ms)"}
    for m, b in bounds.items():
        print(f"  {labels[m]:<12} min {b['min']:9.3f}   mean {b['mean']:9.3f}   max {b['max']:9.3f}")
    print(f"  supernet params {supernet_params:.3f} M")


def _load_run_child(args):
    """(arch, child, input convention) from --run DIR or --arch FILE --weights FILE; the input
    convention is --input-convention's where the command has it, else the one recorded with the
    child (None: the data's own normalisation)."""
    from .arch import load_arch
    from .export import load_child, recorded_convention

    if args.run:
        run = Path(args.run)
        if not run.is_dir():
            raise DsnasError(f"run directory {run} does not exist")
        arch_path, weights = run / "arch.yaml", run / "child.safetensors"
        if not arch_path.exists():
            raise DsnasError(f"{run} has no arch.yaml (is it a finished dsnas run?)")
    else:
        if not (args.arch and args.weights):
            raise DsnasError("give --run DIR, or both --arch FILE and --weights FILE")
        arch_path, weights = Path(args.arch), Path(args.weights)
    arch = load_arch(arch_path)
    child = load_child(arch, weights, args.max_model_gb)
    asked = getattr(args, "input_convention", None)
    if asked is not None:
        return arch, child, None if asked == DATA_NORMALISATION else asked
    return arch, child, recorded_convention(arch, weights)


DATA_NORMALISATION = "data"  # --input-convention: normalise by the data's own statistics, as dsnas trains


def _check_outputs(paths: list, force: bool) -> None:
    """Outputs named on the command line: regular files or new paths in folders that take files,
    each named once, and never one that exists unless --force; checked before anything is
    computed (and, without --force, again as each is written: `files.atomic_path`)."""
    from .files import check_creatable, check_writable

    named = [p for p in paths if p is not None and p != "-"]
    for i, path in enumerate(named):
        if any(os.path.realpath(path) == os.path.realpath(other) for other in named[:i]):
            raise DsnasError(f"{path} is named as two outputs; give each its own file")
        check_writable(path)
        if Path(path).exists() and not force:
            raise DsnasError(f"{path} already exists; pass --force to replace it")
        check_creatable(path)


def cmd_export(args) -> int:
    from .arch import save_arch
    from .export import convention_metadata, export_onnx

    if not (args.onnx or args.mmrazor):
        raise DsnasError("nothing to export: give --onnx FILE and/or --mmrazor FILE")
    if args.onnx == "-":
        raise DsnasError("--onnx needs a file (ONNX is binary and is checked from the file)")
    _check_outputs([args.onnx, args.mmrazor], args.force)
    arch, child, convention = _load_run_child(args)
    if args.mmrazor:
        save_arch(arch, args.mmrazor, mmrazor=True, replace=args.force)
        if args.mmrazor != "-":
            print(f"wrote {args.mmrazor} (MMRazor subnet YAML)")
    if args.onnx:
        diff = export_onnx(child, args.onnx, arch.settings["input_size"], arch.settings["in_channels"],
                           check=not args.no_check, replace=args.force, metadata=convention_metadata(convention))
        checked = "" if diff is None else f"; onnxruntime matches PyTorch within {diff:.1e}"
        checked += f"; input convention {convention} in its metadata" if convention else ""
        print(f"wrote {args.onnx}{checked}")
    return 0


HERE = "\0out"  # --resume with no folder: the --out folder, resumed where it holds a run, else started


def cmd_search(args) -> int:
    from .config import load_run_config

    if getattr(args, "train", False) and not args.arch and not args.resume:
        raise DsnasError("dsnas train needs an architecture file: dsnas train ARCH")
    if args.resume == HERE:
        return _start_or_resume(args)
    if args.resume and args.out and args.resume != args.out:
        raise DsnasError("give the run directory once: --resume DIR (without --out)")
    out = args.resume or args.out
    if args.resume:
        if args.config or args.set or args.data or getattr(args, "method", None):
            raise DsnasError("--resume continues a run with its saved config.yaml; --config/--set/--data/--method "
                             "cannot change it")
        cfg = load_run_config(args.resume)
    else:
        cfg = _config_from_args(args)
    from .train import run_search

    run_search(cfg, Path(out) if out else None, resume=bool(args.resume), quiet=args.quiet)
    return 0


def _config_from_args(args):
    """The configuration a command line gives: preset or file, --set, --data, and the method."""
    from .config import load_config

    cfg = load_config(args.config, args.set)
    if args.data:
        cfg.data = args.data
    if getattr(args, "arch", None):  # dsnas train ARCH
        cfg = dataclasses.replace(cfg, method="fixed", arch=args.arch)
    elif getattr(args, "method", None):
        cfg = dataclasses.replace(cfg, method=args.method)
    return cfg.validate()


def _start_or_resume(args) -> int:
    """``--out DIR --resume``: one command line for a first start, a rerun, torchrun's restarts and
    a requeued job. DIR's last checkpoint is resumed (the command line must give the run's own
    configuration), a finished run is left as it is, and otherwise the run starts in DIR."""
    from .config import load_run_config
    from .report import clear_unstarted, run_dir_state
    from .runtime import launch_env

    if not args.out:
        raise DsnasError("--resume without a folder resumes or starts --out DIR: give --out (or --resume DIR)")
    out, cfg = Path(args.out), _config_from_args(args)
    state = run_dir_state(out)
    if state == "finished":
        if launch_env()[1] == 0:
            print(f"{out} holds a finished run (metrics.json); nothing to train (dsnas eval --run {out} evaluates it)")
        return 0
    if state == "checkpointed":
        saved = load_run_config(out)
        _check_same_run(out, saved, cfg)
        cfg = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in CHANGES_NOTHING})
    elif launch_env()[1] == 0:
        clear_unstarted(out)  # what a start that never reached its first checkpoint left
    from .train import run_search

    run_search(cfg, out, resume=state == "checkpointed", quiet=args.quiet)
    return 0


CHANGES_NOTHING = ("dist_timeout_s",)  # keys a resume may give anew: how long to wait, not what is computed


def _check_same_run(out: Path, saved, given) -> None:
    """Refuse to resume the run in ``out`` (config ``saved``) with a command line that configures
    another one (``given``): the first key that differs, however each says it."""
    from .plan import check_run, full_space_settings

    def keys(cfg) -> dict:
        cfg = check_run(cfg)
        flat = {k: v for k, v in cfg.to_dict().items() if k != "space"}
        return {**flat, "space": cfg.space, **{f"space.{k}": v for k, v in full_space_settings(cfg).items()}}

    mine, theirs = keys(saved), keys(given)
    # threads 0 leaves the count to the run, which recorded the one it took
    differ = [k for k, v in theirs.items() if mine.get(k) != v and not (k == "threads" and v == 0)
              and k not in CHANGES_NOTHING]
    if differ:
        k = differ[0]
        raise DsnasError(f"{out} holds a run started with {k}={mine.get(k)!r}, this command line gives "
                         f"{k}={theirs[k]!r}; rerun the run's own command line to resume it, or choose another --out")


def cmd_eval(args) -> int:
    from .evaluate import evaluate_child
    from .files import write_text

    arch, child, convention = _load_run_child(args)
    out = evaluate_child(arch, child, _eval_data_spec(args), args.bn_recalibrate, convention)
    print(json_text(out) if args.json else
          f"top1 {out['top1']:.2f}%  top5 {out['top5']:.2f}%  on {out['images']} {out['data']} test images"
          + (f", input as {convention}" if convention else "")
          + (f" (BN re-estimated on {out['bn_recalibrate']} training images)" if out["bn_recalibrate"] else ""))
    if args.run:
        write_text(Path(args.run) / "eval.json", json_text(out, indent=2) + "\n")
    return 0


def _eval_data_spec(args) -> str:
    """--data, else the data the run was trained on, else the embedded set."""
    if args.data is not None:
        return args.data
    if args.run and (Path(args.run) / "config.yaml").exists():
        from .files import read_yaml

        path = Path(args.run) / "config.yaml"
        saved = read_yaml(path, "run config")
        data = saved.get("data", "embedded") if isinstance(saved, dict) else None
        if not isinstance(data, str):
            raise DsnasError(f"{path} is not a run configuration with a data entry; pass --data")
        return data or "embedded"
    return "embedded"


def cmd_import(args) -> int:
    from .published import import_checkpoint

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise DsnasError(f"--out {out} exists and is not empty (use --force to write into it)")
    res = import_checkpoint(args.checkpoint, out, args.arch, args.bn_eps, args.format, args.max_model_gb)
    for note in res["notes"]:
        print(f"note: {note}")
    design = f", {res['settings'].get('design', 'mmrazor')} design" if res["space"] == "shufflenet" else ""
    print(f"imported {args.checkpoint} ({res['format']}, {res['space']} space{design}, "
          f"input {res['input_convention']}) into {out}")
    return 0


def cmd_latency(args) -> int:
    from tqdm import tqdm

    from .config import load_config
    from .data import load_data
    from .latency import measure_latency, save_latency
    from .plan import check_run, space_settings
    from . import spaces

    _check_outputs([args.out], args.force)
    cfg = check_run(load_config(args.config, args.set))
    shape = (args.num_classes, args.in_channels, args.input_size or cfg.input_size or None)
    if None in shape:  # the data gives what the flags leave out; a target device need not hold it
        data = load_data(args.data or cfg.data, shape[2])
        shape = tuple(given or found for given, found in zip(shape, (data.num_classes, data.in_channels,
                                                                     data.input_size)))
    space = spaces.build(cfg.space, space_settings(cfg, *shape), init="torch", max_model_gb=cfg.max_model_gb)
    bar = tqdm(desc=f"timing {space.num_blocks} blocks, rounds", disable=args.quiet or None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    table = measure_latency(space, args.device, args.backend, args.batch, args.threads, args.precision,
                            args.warmup, args.repeats, progress=progress, fit_children=args.fit_children,
                            holdout=args.holdout, ridge=args.ridge)
    bar.close()
    save_latency(table, args.out, replace=args.force)
    rows, base = table.entries([c.names for c in space.choices], space.labels)
    low, high = base + sum(min(r) for r in rows), base + sum(max(r) for r in rows)
    print(f"wrote {args.out}: {table.measured['device_name']}, {args.backend}, batch {args.batch}, "
          f"{args.threads} thread(s); architectures predicted at {low:.3f}-{high:.3f} ms")
    fit = table.fit
    print(f"fitted to {fit['children']} children timed end to end (ridge {fit['ridge']:g}, lookup scale "
          f"{fit['scale']:.3f})")
    print(_held_out_line(table.validation))
    return 0


def _held_out_line(validation: dict | None) -> str:
    """What the held-out children say of the table, and of the lookup it was fitted from."""
    if validation is None:
        return "no children held out: the table is not checked (--holdout)"

    def said(v: dict) -> str:
        tau = "no tau (the timings tie)" if v["tau"] is None else f"tau {v['tau']:.3f}"
        return f"{tau}, median error {v['median_error_pct']:.1f}% (max {v['max_error_pct']:.1f}%)"
    return (f"on {validation['children']} held-out children: {said(validation)}; "
            f"the lookup alone: {said(validation['lookup'])}")


def _run_args(p: argparse.ArgumentParser) -> None:
    """The options of a run: `search` and `train`."""
    p.add_argument("--config", help="YAML config file or preset name (demo, fmnist, imagenet); default demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--data", help="dataset: 'embedded', an IDX folder, a CIFAR-10 folder or an ImageFolder tree "
                   "(same as --set data=...)")
    p.add_argument("--out", help="run directory (default: a new folder under runs/)")
    p.add_argument("--resume", metavar="DIR", nargs="?", const=HERE,
                   help="continue the run in DIR from its last checkpoint; with no DIR, with --out DIR: resume DIR "
                   "where it holds a checkpoint, leave a finished run as it is, start there otherwise (the same "
                   "command line for a first start, a rerun, torchrun's restarts and a requeued job)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.set_defaults(func=cmd_search)


def _latency_args(p: argparse.ArgumentParser) -> None:
    """The options of `latency`: the space, and how and where it is timed."""
    from .latency import FIT_CHILDREN, HOLDOUT

    p.add_argument("--out", required=True, help="the table to write (YAML)")
    p.add_argument("--config", help="YAML config file or preset name (the space: width, data); default demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--data", help="dataset whose classes, channels and image size fix the space")
    p.add_argument("--num-classes", type=_positive_int, help="classes (instead of reading them from the data)")
    p.add_argument("--in-channels", type=_positive_int, help="image channels (instead of reading them from the data)")
    p.add_argument("--input-size", type=_positive_int,
                   help="image size in pixels (default: the config's, else the data's); with --num-classes and "
                   "--in-channels no data is read")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default) or onnxruntime (what an exported child runs on; CPU, fp32)")
    p.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=_positive_int, default=50, help="timed calls per entry (median; default 50)")
    p.add_argument("--warmup", type=_count, default=10, help="untimed calls first (default 10)")
    p.add_argument("--fit-children", type=_count, default=FIT_CHILDREN, metavar="N",
                   help=f"random children timed end to end that the entries are fitted to (default {FIT_CHILDREN}; "
                   "0: the lookup as timed)")
    p.add_argument("--holdout", type=_count, default=HOLDOUT, metavar="N",
                   help=f"more children, never fitted, that check the table: tau and median error (default "
                   f"{HOLDOUT}; 0: none)")
    p.add_argument("--ridge", type=float, metavar="R",
                   help="pull toward the lookup, in children's worth of evidence (default: chosen by "
                   "cross-validation on the fitted children)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_latency)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .data import INPUT_CONVENTIONS

    parser = _Parser(prog="dsnas", description="DSNAS: direct neural architecture search "
                                     "without parameter retraining.")
    parser.add_argument("--version", action="version", version=f"dsnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("search", help="run a DSNAS search (default: the embedded Fashion-MNIST demo)")
    p.add_argument("--method", choices=("dsnas", "spos", "random"),
                   help="dsnas (default), or a baseline on the same supernet: spos (uniform single-path "
                   "training, then evolution) or random (uniform training, then random candidates)")
    _run_args(p)

    p = sub.add_parser("train", help="train one architecture from scratch (the same loop, no search)")
    p.add_argument("arch", nargs="?", help="architecture file (dsnas arch.yaml or MMRazor subnet YAML); "
                   "not needed with --resume")
    _run_args(p)
    p.set_defaults(train=True)

    p = sub.add_parser("eval", help="top-1/top-5 of a child on the test split")
    _child_args(p)
    p.add_argument("--data", help="dataset (default: the run's, else the embedded set)")
    p.add_argument("--bn-recalibrate", type=_count, default=0, metavar="N",
                   help="re-estimate BN statistics on N training images first")
    p.add_argument("--input-convention", choices=(*INPUT_CONVENTIONS, DATA_NORMALISATION),
                   help="how images are fed: a published network's channel order and mean/std (dsnas: RGB, "
                   "ImageNet mean/std; spos: BGR 0-255; mmrazor: RGB 0-255 mean/std), or data (the data's own "
                   "statistics); default: the one the child was imported with, else data")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="costs (MFLOPs, MACs, params, latency) of the space or of an architecture")
    p.add_argument("--arch", help="architecture file (dsnas arch.yaml or MMRazor subnet YAML), or a "
                   "NAS-Bench-201 string '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'")
    p.add_argument("--space", help="the space to describe (default shufflenet; an --arch names its own)")
    p.add_argument("--spaces", action="store_true", help="list every space, with installed packages' (entry point "
                   "group dsnas.spaces), one line each")
    _settings_args(p)
    _model_limit_arg(p)
    p.add_argument("--latency", metavar="FILE", help="latency table (dsnas latency): add the predicted latency")
    p.add_argument("--measure", action="store_true", help="with --arch and --latency: also time the real child "
                   "end to end, as the table was measured")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("latency", help="measure a latency table of the space on this machine")
    _latency_args(p)

    p = sub.add_parser("import", help="read a published DSNAS, SPOS or MMRazor checkpoint into a run folder")
    p.add_argument("checkpoint", help="the .pth / .pth.tar file (read without running pickled code)")
    p.add_argument("--out", required=True, help="run folder to write (arch.yaml, child.safetensors, ...)")
    p.add_argument("--arch", help="architecture (arch file, or 20 op indices like 2,1,0,...): needed for a "
                   "SPOS supernet, overrides the one a file implies")
    p.add_argument("--bn-eps", type=_eps, help="BN eps of the network (DSNAS files do not record it)")
    p.add_argument("--format", default="auto", help="layout: auto (default: detected), dsnas-supernet, dsnas-child, "
                   "spos-supernet, spos-child, mmrazor, or one another space brings")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    _model_limit_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a child: ONNX (checked with onnxruntime), MMRazor YAML")
    _child_args(p)
    p.add_argument("--onnx", help="write ONNX here")
    p.add_argument("--mmrazor", help="write the architecture as MMRazor subnet YAML here ('-': stdout)")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .files import Terminated, sigterm_unwinds

    try:
        with sigterm_unwinds():
            return int(args.func(args) or 0)
    except Terminated:  # every finally has run: no temporary is left, the run lock is released
        print("dsnas: terminated", file=sys.stderr)
        return 143
    except DsnasError as e:
        print(f"dsnas: error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:  # the step reached is checkpointed; the message says how to continue
        if e.show:
            print(e, file=sys.stderr)
        return e.exit_code
    except RankLost as e:  # another process ended or stalled; the last checkpoint is kept
        if e.show:
            print(f"dsnas: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system refused (permissions, disk full, a folder in the way)
        where = f" {e.filename}" if e.filename else ""
        print(one_line(f"dsnas: error: cannot access{where}: {e.strerror or e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
