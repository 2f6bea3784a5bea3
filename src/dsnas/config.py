"""Run configuration: one flat dataclass, YAML files under configs/, ``--set key=value`` overrides.

Every key is typed; unknown keys, wrong types and out-of-range values are one-line errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from .errors import DsnasError
from .files import read_yaml
from .images import DECODERS
from .methods import get_method
from .spaces import DATA_SETTINGS, DEFAULT_SPACE, SPACES, space_class
from .spaces.shufflenet import INIT_SCHEMES, SETTING_MAX


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
    space: str = DEFAULT_SPACE         # the search space (spaces.SPACES); the data sets its classes, channels, size
    width: float = 1.0                 # channel width multiplier of the ShuffleNet space
    channels: int = 16                 # nb201 space: C, the first stage's channels (then 2C, 4C)
    cells_per_stage: int = 5           # nb201 space: N, cells in each of its three stages
    init: str = "aligned"              # aligned (a block's candidates start as one function) | kaiming | torch
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
    # hardware (ignored on CPU where noted)
    device: str = "auto"               # auto | cpu | cuda
    amp: str = "auto"                  # auto (bf16 on CUDA when supported, else off) | off | bf16 | fp16 (scaled)
    channels_last: bool = True         # channels-last memory format (faster on CPU and GPU)
    compile: bool = False              # torch.compile the model (CUDA only)

    def validate(self) -> "Config":
        """Refuse, in one line, a config whose values are out of range or do not fit together."""
        self._check_ranges()
        self._check_choices()
        return self

    def _check_ranges(self) -> None:
        for key in ("epochs", "batch_size"):
            _need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_epochs", "search_epochs", "train_limit", "test_limit", "workers", "input_size",
                    "eval_bn_recalibrate", "checkpoint_every", "seed", "select_images", "candidates",
                    "population", "arch_lr", "momentum", "weight_decay", "label_smoothing", "lr_warmup_epochs",
                    "budget_mflops", "budget_params_m", "budget_ms", "penalty"):
            _need(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("lr", "width"):
            _need(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        _need(self.width <= SETTING_MAX["width"], f"width must be <= {SETTING_MAX['width']:g}, got {self.width}")
        _need(self.input_size <= SETTING_MAX["input_size"],
              f"input_size must be <= {SETTING_MAX['input_size']}, got {self.input_size}")
        _need(self.seed < 2**31, f"seed must be < 2**31, got {self.seed}")
        _need(self.warmup_epochs <= self.search_epochs,
              f"warmup_epochs ({self.warmup_epochs}) must be <= search_epochs ({self.search_epochs})")
        _need(self.search_epochs <= self.epochs,
              f"search_epochs ({self.search_epochs}) must be <= epochs ({self.epochs})")
        _need(self.lr_warmup_epochs <= self.epochs,
              f"lr_warmup_epochs ({self.lr_warmup_epochs}) must be <= epochs ({self.epochs})")
        _need(0 < self.early_fix <= 1, f"early_fix must be in (0, 1], got {self.early_fix}")
        _need(self.label_smoothing < 1, f"label_smoothing must be < 1, got {self.label_smoothing}")
        _need(0 <= self.arch_beta1 < 1 and 0 <= self.arch_beta2 < 1, "arch_beta1 and arch_beta2 must be in [0, 1)")

    def _check_choices(self) -> None:
        _need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        _need(self.space in SPACES, f"space must be one of {', '.join(SPACES)}, got {self.space!r}")
        get_method(self.method).check(self)
        _need(self.init in INIT_SCHEMES, f"init must be one of {', '.join(INIT_SCHEMES)}, got {self.init!r}")
        _need(self.jpeg_decode in DECODERS,
              f"jpeg_decode must be one of {', '.join(DECODERS)}, got {self.jpeg_decode!r}")
        _need(self.amp in ("auto", "off", "bf16", "fp16"), f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        _need(self.cost in COSTS, f"cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
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
        return dataclasses.asdict(self)

    def space_settings(self, num_classes: int, in_channels: int, input_size: int) -> dict:
        """The settings of this run's space: the data's shape, and every other setting of the
        space that this config holds a key for (``width``; ``channels``, ``cells_per_stage``)."""
        keys = {f.name for f in fields(space_class(self.space).Settings)} - set(DATA_SETTINGS)
        return {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                **{k: getattr(self, k) for k in sorted(keys) if k in _TYPES}}


COSTS = {"mflops": ("mflops", "budget_mflops"), "params": ("params_m", "budget_params_m"),
         "latency": ("latency_ms", "budget_ms")}  # cost -> (cost-table metric, budget key)
_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(key: str, value):
    kind = {"int": int, "float": float, "str": str, "bool": bool}[_TYPES[key]]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float) and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            value = kind(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise DsnasError(f"config: {key} must be a finite number, got {value!r}")
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DsnasError(f"config: {key} must be {kind.__name__}, got {value!r}")
    return value


def apply(cfg: Config, updates: dict, source: str) -> Config:
    if not isinstance(updates, dict):
        raise DsnasError(f"{source}: expected a mapping of config keys")
    known = set(_TYPES)
    for key, value in updates.items():
        if key not in known:
            close = [k for k in known if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise DsnasError(f"{source}: unknown config key {key!r}{hint}")
        setattr(cfg, key, _coerce(key, value))
    return cfg


def builtin_configs() -> dict[str, Path]:
    """Presets shipped with the package (configs/*.yaml), by name."""
    folder = Path(str(resources.files("dsnas") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_config(config: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset or YAML file (``config``: a path or a preset name) <- ``key=value`` overrides."""
    cfg = Config()
    name = config or "demo"
    presets = builtin_configs()
    path = presets[name] if name in presets and not Path(name).is_file() else Path(name)  # a file wins
    data = read_yaml(path, "config file")
    if data is not None:
        apply(cfg, data, f"config file {path}")
    for item in overrides:
        if "=" not in item:
            raise DsnasError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if _TYPES.get(key.strip()) == "str":
            value = text
        apply(cfg, {key.strip(): value}, "--set")
    return cfg.validate()


def load_run_config(run_dir: str | Path) -> Config:
    """The configuration a run was started with (its ``config.yaml``), for ``--resume``."""
    path = Path(run_dir) / "config.yaml"
    saved = read_yaml(path, "run config")
    if not isinstance(saved, dict):
        raise DsnasError(f"{path} is not a run configuration")
    saved.pop("world_size", None)
    return apply(Config(), saved, str(path)).validate()
