"""Published checkpoints of the ShuffleNet space: the DSNAS authors', Megvii's SPOS and MMRazor's.

`import_checkpoint` reads one (``torch.load(weights_only=True)``: tensors and plain containers,
never pickled code) and writes a run folder: ``arch.yaml`` (settings, block design and input
convention), ``child.safetensors`` and, for a supernet, ``supernet.safetensors`` (with α where
the file has it). Every tensor of the network must be found with the right shape, and every
key left over must be one the format explains; anything else is a one-line error naming the key.

Layouts, as the DSNAS and SPOS authors' code and MMRazor write them: ``dsnas-supernet`` (``features.<block>.<op>.…`` for all four
ops, plus ``log_alpha``), ``dsnas-child`` (one op per block, its index kept in the key),
``spos-supernet`` (all four ops, BN without affine; the architecture comes from ``--arch``),
``spos-child`` (``features.<block>.…``: the op is read from the shapes) and ``mmrazor`` (a
subnet, ``backbone.layers.<s>.<b>._candidates.<op>.…``).

Another space brings its own published layouts: its class's ``published_layouts()`` returns
``{name: layout}``, each layout an object with

- ``detect(state) -> bool``: whether a state dict (wrapper prefixes removed) is in this layout;
- ``settings(state, config_text, bn_eps) -> (settings, notes)``: the space settings the file
  implies (``config_text``: the config an MMEngine checkpoint carries, or ''; ``bn_eps``: --bn-eps
  or None), and a note on where each came from;
- ``choices(state, arch) -> [op, ...]``: the architecture (``arch``: --arch, or None);
- ``key(ours, net, choices) -> str``: the published key of our tensor ``ours`` of ``net``, the
  network built to receive the file (the supernet when ``supernet`` is true, else the child);
- ``supernet`` (bool), ``input_convention`` (a name of `data.INPUT_CONVENTIONS`), and
  ``ignored(key) -> bool``: keys the file may hold beyond the network's.

Everything else (reading without pickled code, strict key and shape matching, the run folder
written) is this module's, the same for every layout.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from .arch import Architecture, load_arch, save_arch
from .data import to_input  # noqa: F401  (re-exported; the input conventions live in data.py)
from .errors import DsnasError
from .export import save_weights
from .files import check_readable
from .spaces import MAX_MODEL_GB, build, settings_of
from .spaces.shufflenet import OPS, ShuffleNetSpace

SPACE = ShuffleNetSpace.name  # every published model here is a ShuffleNet

SHUFFLENET_FORMATS = ("dsnas-supernet", "dsnas-child", "spos-supernet", "spos-child", "mmrazor")
PREFIXES = ("module.", "architecture.")  # DataParallel's and MMRazor's subnet wrapper's

# Files recognised by md5: what their own config says (SNAS-Series DSNAS/configs).
KNOWN = {
    "c10b463274a0eac5a5ee47418ff15d34": ("DSNASsearch240.pth", {"bn_eps": 0.01}),
    "459098b27704524927fbd8ed34570103": ("DSNASretrain240.pth", {"bn_eps": 1e-5}),
}


def read_checkpoint(path: str | Path) -> dict:
    """The file's tensors and containers, read without running any pickled code."""
    check_readable(path, "checkpoint")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files of the old (pre-zip) format cannot be mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()
        detail = next((line for line in why if "GLOBAL" in line or "Unsupported" in line), why[0] if why else "")
        raise DsnasError(f"checkpoint {path} needs code to load, which dsnas never runs ({detail.strip()})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DsnasError(f"checkpoint {path} is not a readable torch file: {str(e).splitlines()[0]}") from None


def state_dict_of(ckpt, path) -> tuple[dict, str]:
    """(tensors by key without wrapper prefixes, config text or ''), with or without the outer dict."""
    cfg = ""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        meta = ckpt.get("meta")
        cfg = meta.get("cfg", "") if isinstance(meta, dict) and isinstance(meta.get("cfg"), str) else ""
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise DsnasError(f"checkpoint {path} holds no state dict of tensors")
    state = {}
    for key, value in ckpt.items():
        name = str(key)
        for prefix in PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = value
    return state, cfg


def space_layouts() -> dict[str, tuple[str, object]]:
    """The published layouts the other spaces bring (their ``published_layouts()``), by name:
    (space, layout)."""
    from .spaces import space_class, space_names

    found = {}
    for name in space_names():
        for layout_name, layout in getattr(space_class(name), "published_layouts", dict)().items():
            found[layout_name] = (name, layout)
    return found


def formats() -> tuple[str, ...]:
    """Every layout `import_checkpoint` reads."""
    return (*SHUFFLENET_FORMATS, *space_layouts())


FORMATS = SHUFFLENET_FORMATS  # the layouts of the published ShuffleNets (`formats` adds those of other spaces)


def detect(state: dict) -> str:
    """The layout of a state dict (one of `formats`): another space's first, then ShuffleNet's."""
    for name, (_, layout) in space_layouts().items():
        if layout.detect(state):
            return name
    if any(k.startswith("backbone.") for k in state):
        return "mmrazor"
    ops = {m.group(1, 2) for k in state if (m := re.match(r"features\.(\d+)\.(\d+)\.branch_", k))}
    if ops:
        per_block = len(ops) / len({b for b, _ in ops})
        if per_block == 1:
            return "dsnas-child"
        return "dsnas-supernet" if "log_alpha" in state else "spos-supernet"
    if any(re.match(r"features\.\d+\.branch_main\.", k) for k in state):
        return "spos-child"
    raise DsnasError("not a published ShuffleNet checkpoint: no features.* or backbone.* keys")


def _official_index(branch, k: int, j: int) -> int:
    """Index in the authors' flat Sequential of layer ``j`` (0 conv, 1 BN) of our ``k``-th conv-BN."""
    return sum(len(branch[m]) for m in range(k)) + j


def their_key(ours: str, layout: str, unit=None, op: str | None = None) -> str:
    """The published key of our child's tensor ``ours``; for a block's tensor, ``unit`` is our
    module of that block and ``op`` its op."""
    head, *rest = ours.split(".")
    if layout == "mmrazor":
        fixed = {"stem": "backbone.conv1", "head": "backbone.layers.4", "classifier": "head.fc"}
        if head in ("stem", "head"):
            return f"{fixed[head]}.{('conv', 'bn')[int(rest[0])]}.{rest[1]}"
        if head == "classifier":
            return f"head.fc.{rest[0]}"
        i, branch, k, j, param = rest
        s, b = _stage_block(int(i))
        part = ("conv", "bn")[int(j)]
        name = f"backbone.layers.{s}.{b}._candidates.{op}"
        if branch == "branch_b" and op == "shuffle_xception":  # depthwise-separable modules
            return f"{name}.branch2.{int(k) // 2}.{('depthwise_conv', 'pointwise_conv')[int(k) % 2]}.{part}.{param}"
        return f"{name}.branch{1 if branch == 'branch_a' else 2}.{k}.{part}.{param}"
    fixed = {"stem": "first_conv", "head": "conv_last"}
    if head in fixed:
        return f"{fixed[head]}.{rest[0]}.{rest[1]}"
    if head == "classifier":
        return f"classifier.0.{rest[0]}"
    i, branch, k, j, param = rest
    seq = getattr(unit, branch)
    where = f"features.{i}" if layout == "spos-child" else f"features.{i}.{OPS.index(op)}"
    name = "branch_proj" if branch == "branch_a" else "branch_main"
    return f"{where}.{name}.{_official_index(seq, int(k), int(j))}.{param}"


def _stage_block(i: int) -> tuple[int, int]:
    from .spaces.shufflenet import STAGE_REPEATS

    for s, r in enumerate(STAGE_REPEATS):
        if i < r:
            return s, i
        i -= r
    raise ValueError(i)


def architecture_of(state: dict, layout: str, arch: str | None) -> list[str]:
    """The op of every block: from the keys, α, the shapes, or ``--arch``."""
    if arch:
        return _given(arch)
    if layout == "dsnas-child":
        found = {int(b): int(o) for b, o in (re.match(r"features\.(\d+)\.(\d+)\.", k).groups()
                                               for k in state if re.match(r"features\.\d+\.\d+\.", k))}
        return [OPS[found[i]] if i in found else _missing(f"features.{i}.*") for i in range(20)]
    if layout == "dsnas-supernet":
        alpha = state["log_alpha"]
        if tuple(alpha.shape) != (20, len(OPS)):
            raise DsnasError(f"log_alpha has shape {tuple(alpha.shape)}, expected (20, {len(OPS)})")
        return [OPS[int(i)] for i in alpha.argmax(-1)]
    if layout == "spos-supernet":
        raise DsnasError("a SPOS supernet holds every op: give the architecture with --arch "
                         "(an arch file, or 20 op indices such as 2,1,0,...)")
    if layout == "spos-child":
        ops = []
        for i in range(20):
            if f"features.{i}.branch_main.12.weight" in state:  # only the Xception main branch is that deep
                ops.append("shuffle_xception")
            else:
                dw = state.get(f"features.{i}.branch_main.3.weight")
                if dw is None or dw.ndim != 4 or dw.shape[-1] not in (3, 5, 7):
                    _missing(f"features.{i}.branch_main.3.weight (a depthwise 3x3, 5x5 or 7x7)")
                ops.append(f"shuffle_{dw.shape[-1]}x{dw.shape[-1]}")
        return ops
    found = {}
    for k in state:
        if m := re.match(r"backbone\.layers\.(\d)\.(\d+)\._candidates\.(\w+?)\.branch", k):
            found.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    ops = []
    for i in range(20):
        names = found.get(_stage_block(i), set())
        if len(names) != 1 or not names <= set(OPS):
            raise DsnasError(f"backbone.layers.{'.'.join(map(str, _stage_block(i)))} holds candidates "
                             f"{sorted(names)}: expected one of {list(OPS)} (a subnet)")
        ops.append(names.pop())
    return ops


def _missing(key: str):
    raise DsnasError(f"checkpoint has no {key}")


def _given(arch: str) -> list[str]:
    if re.fullmatch(r"\s*\d(\s*,\s*\d)*\s*", arch) and not Path(arch).exists():
        idx = [int(i) for i in arch.split(",")]
        if len(idx) != 20 or max(idx) >= len(OPS):
            raise DsnasError(f"--arch {arch}: expected 20 op indices in 0..{len(OPS) - 1}")
        return [OPS[i] for i in idx]
    return list(load_arch(arch).choices)


def settings_for(state: dict, layout: str, cfg: str, bn_eps: float | None, md5: str) -> tuple[dict, list[str]]:
    """The space settings of the file, and notes on where each came from."""
    notes = []
    official = layout != "mmrazor"
    fc = state.get("head.fc.weight" if not official else "classifier.0.weight")
    if fc is None or fc.ndim != 2:
        _missing("head.fc.weight" if not official else "classifier.0.weight")
    stem_bn = "backbone.conv1.bn.weight" if not official else "first_conv.1.weight"
    settings = {"num_classes": int(fc.shape[0]), "design": "official" if official else "mmrazor",
                "bn_affine": stem_bn in state, "dropout": 0.1 if layout.startswith("spos") else 0.0}
    if not official:
        settings["classifier_bias"] = "head.fc.bias" in state
    if bn_eps is None and md5 in KNOWN:
        name, known = KNOWN[md5]
        bn_eps = known["bn_eps"]
        notes.append(f"recognised {name} by its md5: BN eps {bn_eps:g}, as its config says")
    if bn_eps is None and layout == "mmrazor":
        m = re.search(r"norm_cfg\s*=\s*dict\([^)]*eps\s*=\s*([0-9.eE+-]+)", cfg)
        bn_eps = float(m[1]) if m else 1e-5
        notes.append(f"BN eps {bn_eps:g} " + ("from the config in the checkpoint" if m else "(mmcv's default)"))
    if bn_eps is None and layout.startswith("spos"):
        bn_eps = 1e-5
        notes.append("BN eps 1e-05 (the SPOS code's default)")
    if bn_eps is None:
        raise DsnasError("a DSNAS checkpoint does not record its BN eps: give --bn-eps "
                         "(0.01 for the searched network, 1e-5 for a retrained one)")
    settings["bn_eps"] = bn_eps
    return settings, notes


def _fill(model, state: dict, key_of, used: set, path) -> None:
    """Copy the published tensors into ``model``: each found, with our shape and a finite value."""
    mine = model.state_dict()
    for ours, want in mine.items():
        key = key_of(ours)
        if key not in state:
            if ours.endswith("num_batches_tracked"):
                continue  # older torch saved none; nothing depends on it in evaluation
            raise DsnasError(f"checkpoint {path} has no {key} (for {ours})")
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise DsnasError(f"checkpoint {path}: {key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise DsnasError(f"checkpoint {path}: {key} holds NaN or infinite values")
        want.copy_(got)
        used.add(key)


def _leftover(state: dict, used: set, layout: str, path) -> None:
    """Every key not copied must be one the layout explains."""
    for key in state:
        if key in used or key.endswith("num_batches_tracked"):
            continue
        if key == "log_alpha" and layout.startswith("dsnas"):
            continue  # a supernet's alpha (written separately), or a retrained child's unused initial one
        raise DsnasError(f"checkpoint {path} has an unexpected key {key}")


def md5_of(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_checkpoint(path, out, arch: str | None = None, bn_eps: float | None = None,
                      layout: str = "auto", max_model_gb: float = MAX_MODEL_GB) -> dict:
    """Read a published checkpoint and write the run folder ``out`` (a network past
    ``max_model_gb`` is refused before it is built); returns what was imported."""
    if layout != "auto" and layout not in formats():
        raise DsnasError(f"--format {layout}: expected auto or one of {', '.join(formats())}")
    state, cfg = state_dict_of(read_checkpoint(path), path)
    found = detect(state)
    if layout != "auto" and layout != found:
        raise DsnasError(f"checkpoint {path} looks like {found}, not {layout}")
    if found in space_layouts():
        return _import_space_layout(path, out, state, cfg, found, arch, bn_eps, max_model_gb)
    md5 = md5_of(path)
    settings, notes = settings_for(state, found, cfg, bn_eps, md5)
    space_settings = settings_of(SPACE, settings)
    choices = architecture_of(state, found, arch)
    convention = "mmrazor" if found == "mmrazor" else found.split("-")[0]
    used: set = set()
    supernet = None
    if found.endswith("supernet"):
        supernet = build(SPACE, space_settings, "torch", max_model_gb)
        with torch.no_grad():
            _fill(supernet, state, lambda k: _supernet_key(k, found, supernet), used, path)
        child = supernet.child(choices)
    else:
        from .spaces import build_child

        child = build_child(SPACE, choices, space_settings, "torch", max_model_gb)
        with torch.no_grad():
            _fill(child, state, lambda k: _child_key(k, found, child, choices), used, path)
    _leftover(state, used, found, path)
    _write_run(out, Architecture(choices, SPACE, space_settings.as_dict()), child, supernet, path, found, md5,
               convention)
    if supernet is not None and "log_alpha" in state:
        from safetensors.torch import save_file

        save_file({"log_alpha": state["log_alpha"].float().contiguous()}, str(Path(out) / "alpha.safetensors"))
    return {"format": found, "space": SPACE, "choices": choices, "settings": space_settings.as_dict(),
            "input_convention": convention, "notes": notes}


def _write_run(out, arch: Architecture, child, supernet, path, found: str, md5: str, convention: str) -> None:
    """The run folder of an imported file: arch.yaml, child.safetensors and the supernet's weights."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": str(Path(path).name), "source_format": found, "source_md5": md5,
            "input_convention": convention, "created_by": "dsnas import"}
    save_arch(Architecture(arch.choices, arch.space, arch.settings, meta), out / "arch.yaml")
    save_weights(child.eval(), out / "child.safetensors", {"input_convention": convention})
    if supernet is not None:
        save_weights(supernet, out / "supernet.safetensors", {"input_convention": convention})


def _import_space_layout(path, out, state: dict, cfg: str, found: str, arch: str | None, bn_eps: float | None,
                         max_model_gb: float) -> dict:
    """`import_checkpoint` for a layout another space brings (`space_layouts`)."""
    from .spaces import build_child

    space, layout = space_layouts()[found]
    settings, notes = layout.settings(state, cfg, bn_eps)
    space_settings = settings_of(space, settings)
    choices = list(load_arch(arch).choices) if arch else layout.choices(state, None)
    used: set = set()
    if layout.supernet:
        net = build(space, space_settings, "torch", max_model_gb)
    else:
        net = build_child(space, choices, space_settings, "torch", max_model_gb)
    with torch.no_grad():
        _fill(net, state, lambda k: layout.key(k, net, choices), used, path)
    for key in state:
        if key not in used and not key.endswith("num_batches_tracked") and not layout.ignored(key):
            raise DsnasError(f"checkpoint {path} has an unexpected key {key}")
    child = net.child(choices) if layout.supernet else net
    _write_run(out, Architecture(choices, space, space_settings.as_dict()), child, net if layout.supernet else None,
               path, found, md5_of(path), layout.input_convention)
    return {"format": found, "space": space, "choices": choices, "settings": space_settings.as_dict(),
            "input_convention": layout.input_convention, "notes": notes}


def _child_key(ours: str, layout: str, child, choices: list[str]) -> str:
    m = re.match(r"blocks\.(\d+)\.", ours)
    return their_key(ours, layout, child.blocks[int(m[1])], choices[int(m[1])]) if m else their_key(ours, layout)


def _supernet_key(ours: str, layout: str, supernet) -> str:
    """Published key of a supernet tensor: ``blocks.<i>.candidates.<c>.<rest>`` -> that op's."""
    m = re.match(r"blocks\.(\d+)\.candidates\.(\d+)\.(.*)", ours)
    if not m:
        return their_key(ours, layout)
    i, c = int(m[1]), int(m[2])
    return their_key(f"blocks.{i}.{m[3]}", layout, supernet.blocks[i].candidates[c], OPS[c])
