"""Run configuration: one dataclass, YAML files under configs/, ``--set key=value`` overrides.

Every key is typed; unknown keys, wrong types and out-of-range values are one-line errors. The
search space's own settings sit under its name (``space: {name: nb201, channels: 8}``,
``--set space.channels=8``) and are the space's to check (`dsnas.plan.check_run`), so this
module knows no space, method or tensor: it imports neither PyTorch nor the rest of dsnas.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from .errors import DsnasError, quote
from .files import parse_yaml, read_yaml

DEFAULT_SPACE = "shufflenet"  # the space of a file that names none (an MMRazor subnet, a run before spaces)
MAX_MODEL_GB = 2.0   # default limit on a network's memory for one image (`spaces.Footprint.gigabytes`)
# Space settings that files held at the top level before they moved under ``space``, with the value
# such a file wrote when the user left them alone: they still load (`resolve_flat_keys`).
FLAT_SPACE_KEYS = {"width": 1.0, "design": "mmrazor", "bn_affine": True, "bn_eps": 0.01, "dropout": 0.0,
                   "channels": 16, "cells_per_stage": 5, "ops": ""}
CREDITS = ("gate", "loss")  # what rewards the sampled op: the paper's dL/dZ, or the step's loss (score function)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise DsnasError(f"config: {msg}")


@dataclass
class Config:
    # data
    data: str = "embedded"             # 'embedded', an IDX folder, or an ImageFolder tree (train/, val/)
    input_size: int = 0                # ImageFolder of large images: crop size (0 = 224); others: from data
    train_limit: int = 0               # cap on training images (0 = all)
    test_limit: int = 0                # cap on test images (0 = all)
    workers: int = 4                   # DataLoader workers for streamed (large-image) data
    jpeg_decode: str = "workers"       # streamed JPEGs: decoded by PIL in the workers, or on the run's device (nvJPEG)
    augment: bool = True               # in-memory data: padded random crop (2 px) and horizontal flip
    # space and method
    space: str = DEFAULT_SPACE         # the search space, by name; the data sets its classes, channels, size
    space_settings: dict = field(default_factory=dict)  # the space's other settings given (space.KEY=VALUE);
                                       # those left out take the space's defaults, or its search_settings
    flat_space_settings: dict = field(default_factory=dict, repr=False)  # FLAT_SPACE_KEYS an older file gave at
                                       # the top level: `plan.check_run` keeps those of the run's space
    init: str = "aligned"              # how the supernet starts: one of its space's init_schemes (ShuffleNet:
                                       # aligned, a block's candidates start as one function; kaiming; torch)
    init_from: str = ""                # start the supernet from this folder's weights instead (dsnas import
                                       # of a published supernet, or a dsnas run); warm-up may then be 0
    method: str = "dsnas"              # dsnas | spos | random (baselines) | fixed (train `arch` from scratch)
    arch: str = ""                     # method fixed: the architecture file to train
    # schedule (epochs are counted from 0; finetune runs from search_epochs to epochs)
    epochs: int = 240
    warmup_epochs: int = 15            # weights only, alpha frozen
    search_epochs: int = 85            # end of the search stage; then finetune the argmax child
    batch_size: int = 1024             # total over all ranks
    lr: float = 0.5                    # SGD learning rate at batch_size
    lr_warmup_epochs: float = 5.0      # linear LR warm-up, then cosine to 0
    momentum: float = 0.9
    weight_decay: float = 4e-5         # not applied to BN and biases
    label_smoothing: float = 0.1
    # architecture
    arch_lr: float = 1e-3              # Adam on alpha
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    early_fix: float = 0.3             # h: fix a block when top-1 minus top-2 probability >= h
    credit: str = "auto"               # what rewards the sampled op: gate (the paper's dL/dZ) | loss (the step's
                                       # loss, score function) | auto (the space's: gate, nb201 loss)
    never_pick: str = "auto"           # candidates derive and early fix never choose, comma-separated ("": no
                                       # candidate; auto: the space's, for nb201 none where it is a candidate)
    cost: str = "mflops"               # what the budget limits: mflops | params | latency (needs latency_table)
    budget_mflops: float = 0.0         # tau for cost mflops: penalise sampled paths at or above this (0 = no budget)
    budget_params_m: float = 0.0       # tau for cost params (millions of parameters)
    budget_ms: float = 0.0             # tau for cost latency (ms, as the latency table predicts it)
    latency_table: str = ""            # a table from `dsnas latency` (measured on the target device)
    penalty: float = 0.0               # lambda: alpha-gradient per unit of cost above the budget
    # spos / random: the supernet trains with uniform single paths until search_epochs, then
    # `candidates` architectures within the budget are ranked by top-1 on `select_images` training
    # images held out from weight training (BN re-estimated on eval_bn_recalibrate images each)
    candidates: int = 100              # architectures evaluated
    population: int = 20               # spos: architectures per generation
    mutation_prob: float = 0.1         # spos: chance that a mutation resamples a block
    select_images: int = 0             # held-out training images that rank them (0 = a tenth, at most 10,000)
    # evaluation, logging, checkpoints
    eval_bn_recalibrate: int = 0       # training images used to re-estimate BN stats before each search-stage eval
    checkpoint_every: int = 0          # also checkpoint every N steps (0 = at epoch ends only)
    seed: int = 0
    max_model_gb: float = MAX_MODEL_GB  # refuse a network past this for one image (spaces.Footprint): raise it for big ones
    # hardware (ignored on CPU where noted)
    device: str = "auto"               # auto | cpu | cuda
    amp: str = "auto"                  # auto (bf16 on CUDA when supported, else off) | off | bf16 | fp16 (scaled)
    channels_last: bool = True         # channels-last memory format (faster on CPU and GPU)
    compile: bool = False              # torch.compile the model (CUDA only)
    deterministic: bool = False        # deterministic algorithms only: CUDA runs repeat (and resume) bitwise, slower
    dist_timeout_s: int = 1800         # torchrun: how long an exchange between the processes may wait before
                                       # the run stops, naming the rank that is lost or stalled (ranks.RankWatch)
    threads: int = 0                   # intra-op CPU threads of every process (0: rank 0's OMP_NUM_THREADS, else torch's
                                       # default); config.yaml records the count, so a resume keeps the numerics

    def validate(self) -> "Config":
        """Refuse, in one line, a config whose values are out of range or do not fit together."""
        self._check_ranges()
        self._check_choices()
        return self

    def _check_ranges(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if _kind(_HINTS[f.name])[0] in (int, float) and value is not None:  # every number has a range: RANGES
                r = RANGES[f.name]
                _need(value in r, f"{f.name} must be {r}, got {value}")
        _need(self.warmup_epochs <= self.search_epochs,
              f"warmup_epochs ({self.warmup_epochs}) must be <= search_epochs ({self.search_epochs})")
        _need(self.search_epochs <= self.epochs,
              f"search_epochs ({self.search_epochs}) must be <= epochs ({self.epochs})")
        _need(self.lr_warmup_epochs <= self.epochs,
              f"lr_warmup_epochs ({self.lr_warmup_epochs}) must be <= epochs ({self.epochs})")

    def _check_choices(self) -> None:
        """The choices this module owns; the method, space, init, credit and decoder names are
        checked by the modules that define them (`dsnas.plan.check_run`)."""
        _need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"device must be auto, cpu or cuda[:N], got {quote(self.device)}")
        _need(self.amp in ("auto", "off", "bf16", "fp16"), f"amp must be auto, off, bf16 or fp16, got {quote(self.amp)}")
        _need(self.cost in COSTS, f"cost must be one of {', '.join(COSTS)}, got {quote(self.cost)}")
        _need(self.credit in ("auto", *CREDITS), f"credit must be auto, {', '.join(CREDITS)}, got {quote(self.credit)}")
        _need(self.cost != "latency" or bool(self.latency_table),
              "cost latency needs latency_table (from dsnas latency)")

    @property
    def cost_metric(self) -> str:
        """The cost table's metric that the budget limits."""
        return COSTS[self.cost][0]

    @property
    def budget(self) -> float | None:
        """The budget of the chosen cost, in its unit (None: no budget)."""
        return getattr(self, COSTS[self.cost][1]) or None

    def to_dict(self) -> dict:
        """The configuration as files hold it: the space's settings under ``space``."""
        out = dataclasses.asdict(self)
        flat, given = out.pop("flat_space_settings"), out.pop("space_settings")
        out = {k: ({"name": v, **given} if k == "space" else v) for k, v in out.items()}
        return {**out, **{k: v for k, v in flat.items() if v is not SPACE_DEFAULT}}


@dataclass(frozen=True)
class Range:
    """The values a numeric config key accepts: ``low`` to ``high``, each end closed unless open."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {_number(self.low)}"
        return (f"in {'(' if self.open_low else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.open_high else ']'}")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e10 else f"{v:g}"


COUNT = Range(0, 2**31 - 1)      # image and step counts: any that fits in 32 bits
EPOCHS = Range(0, 100_000)
FRACTION = Range(0, 1, open_high=True)
MODEL_GB = Range(0, 1e6, open_low=True)  # max_model_gb; also the range of the --max-model-gb flag
RANGES = {  # every int and float key of Config (a key missing here fails every validate)
    "input_size": Range(0, 4096), "train_limit": COUNT, "test_limit": COUNT, "workers": Range(0, 128),
    "epochs": Range(1, EPOCHS.high), "warmup_epochs": EPOCHS, "search_epochs": EPOCHS,
    "batch_size": Range(1, 1 << 20), "lr": Range(0, 100, open_low=True), "lr_warmup_epochs": EPOCHS,
    "momentum": FRACTION, "weight_decay": Range(0, 1), "label_smoothing": FRACTION,
    "arch_lr": Range(0, 10), "arch_beta1": FRACTION, "arch_beta2": FRACTION, "early_fix": Range(0, 1, open_low=True),
    "budget_mflops": Range(0, 1e9), "budget_params_m": Range(0, 1e6), "budget_ms": Range(0, 1e7),
    "penalty": Range(0, 1e4),
    "candidates": Range(0, 100_000), "population": Range(0, 10_000), "mutation_prob": Range(0, 1),
    "select_images": COUNT, "eval_bn_recalibrate": COUNT, "checkpoint_every": COUNT, "seed": Range(0, 2**31 - 1),
    "threads": Range(0, 1024), "dist_timeout_s": Range(1, 7 * 24 * 3600),
    "max_model_gb": MODEL_GB,
}
COSTS = {"mflops": ("mflops", "budget_mflops"), "params": ("params_m", "budget_params_m"),
         "latency": ("latency_ms", "budget_ms")}  # cost -> (cost-table metric, budget key)
_HINTS = typing.get_type_hints(Config)
_KEYS = set(_HINTS) - {"space_settings", "flat_space_settings"}  # what files and --set name
SPACE_DEFAULT = object()  # a flat space setting an older run file left out: the space's default, not a search's


def _kind(hint) -> tuple[type, bool]:
    """The type a hint names, and whether it may be None (``int | None``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), type(None) in typing.get_args(hint)


def coerce(key: str, hint, value, where: str = "config"):
    """``value`` as the type ``hint`` names (YAML and the command line give ints for floats, strings
    for numbers such as '1e-3'), else a one-line error naming ``key``."""
    kind, optional = _kind(hint)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float) and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            value = kind(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise DsnasError(f"{where}: {key} must be a finite number, got {quote(value)}")
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DsnasError(f"{where}: {key} must be {kind.__name__}, got {quote(value)}")
    return value


def apply(cfg: Config, updates: dict, source: str) -> Config:
    """``updates`` (a file's mapping, or --set items) applied to ``cfg`` in order: a later value
    wins, also between a flat space key and its ``space.KEY`` form."""
    if not isinstance(updates, dict):
        raise DsnasError(f"{source}: expected a mapping of config keys")
    for key, value in updates.items():
        key = str(key)
        if key == "space":
            _apply_space(cfg, value, source)
        elif key.startswith("space."):
            _set_space_setting(cfg, key[len("space."):], value, source)
        elif key in FLAT_SPACE_KEYS:
            cfg.space_settings.pop(key, None)
            cfg.flat_space_settings[key] = value
        elif key in _KEYS:
            setattr(cfg, key, coerce(key, _HINTS[key], value))
        else:
            close = {k for k in _KEYS if k.split("_")[0] == key.split("_")[0]}
            close |= set(difflib.get_close_matches(key, _KEYS, n=3, cutoff=0.8))
            hint = (f" (did you mean {', '.join(sorted(close))}?)" if close
                    else " (a setting of the space goes under it: space.KEY)")
            raise DsnasError(f"{source}: unknown config key {quote(key)}{hint}")
    return cfg


def _apply_space(cfg: Config, value, source: str) -> None:
    """``space: NAME`` or ``space: {name: NAME, KEY: VALUE, ...}``; naming another space than the
    one before drops the settings given for that one."""
    if isinstance(value, dict):
        settings = dict(value)
        if "name" in settings:
            _apply_space(cfg, settings.pop("name"), source)
        for key, setting in settings.items():
            _set_space_setting(cfg, str(key), setting, source)
        return
    if not isinstance(value, str) or not value:
        raise DsnasError(f"{source}: space must be a space name, or a mapping of name and the space's settings, "
                         f"got {quote(value)}")
    if value != cfg.space:
        cfg.space, cfg.space_settings = value, {}


def _set_space_setting(cfg: Config, key: str, value, source: str) -> None:
    if not key or "." in key or key == "name":
        raise DsnasError(f"{source}: space.{key} names no space setting")
    if not (value is None or isinstance(value, (str, bool, int, float))):
        raise DsnasError(f"{source}: space.{key} must be a number, a string, true or false, got {quote(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DsnasError(f"{source}: space.{key} must be a finite number, got {quote(value)}")
    cfg.flat_space_settings.pop(key, None)
    cfg.space_settings[key] = value


def builtin_configs() -> dict[str, Path]:
    """Presets shipped with the package (configs/*.yaml), by name."""
    folder = Path(str(resources.files("dsnas") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_config(config: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset or YAML file (``config``: a path or a preset name) <- the file's section
    for the run's space (``spaces: {nb201: {...}}``) <- ``key=value`` overrides. The space a
    --set names is chosen first, so that the file's section for it applies."""
    cfg = Config()
    name = config or "demo"
    presets = builtin_configs()
    path = presets[name] if name in presets and not Path(name).is_file() else Path(name)  # a file wins
    data = read_yaml(path, "config file")
    by_space = data.pop("spaces", None) if isinstance(data, dict) else None
    if data is not None:
        apply(cfg, data, f"config file {path}")
    updates = _parse_overrides(overrides)
    if isinstance(updates.get("space"), str):
        apply(cfg, {"space": updates["space"]}, "--set")
    if by_space is not None:
        if not isinstance(by_space, dict) or not all(isinstance(v, dict) for v in by_space.values()):
            raise DsnasError(f"config file {path}: spaces must map space names to mappings of config keys")
        apply(cfg, by_space.get(cfg.space, {}), f"config file {path}, spaces.{cfg.space}")
    apply(cfg, updates, "--set")
    return cfg.validate()


def _parse_overrides(overrides: list[str]) -> dict:
    """``key=value`` items as a mapping (a later one wins), values read as YAML except for string keys."""
    updates = {}
    for item in overrides:
        if "=" not in item:
            raise DsnasError(f"--set expects key=value, got {quote(item)}")
        key, text = item.split("=", 1)
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if key.strip() in _KEYS and _kind(_HINTS[key.strip()])[0] is str:
            value = text
        updates.pop(key.strip(), None)
        updates[key.strip()] = value
    return updates


def load_run_config(run_dir: str | Path) -> Config:
    """The configuration a run was started with (its ``config.yaml``), for ``--resume``."""
    path = Path(run_dir) / "config.yaml"
    saved = read_yaml(path, "run config")
    if not isinstance(saved, dict):
        raise DsnasError(f"{path} is not a run configuration")
    saved.pop("world_size", None)
    for key, value in _BEFORE_THE_KEY.items():  # a run saved before a key existed continues as it ran
        saved.setdefault(key, value)
    cfg = apply(Config(), saved, str(path))
    if not isinstance(saved.get("space", DEFAULT_SPACE), dict):  # settings at the top level: one they left
        for key in FLAT_SPACE_KEYS:                               # out takes the space's default, as it did
            if key not in saved:
                cfg.flat_space_settings[key] = SPACE_DEFAULT
    return cfg.validate()


def run_world_size(run_dir: str | Path) -> int | None:
    """How many processes the run in ``run_dir`` was started on (None: not recorded)."""
    saved = read_yaml(Path(run_dir) / "config.yaml", "run config")
    world = saved.get("world_size") if isinstance(saved, dict) else None
    return world if isinstance(world, int) and not isinstance(world, bool) else None


_BEFORE_THE_KEY = {"credit": "gate", "never_pick": "", "threads": 0}  # what runs saved before these keys searched with
