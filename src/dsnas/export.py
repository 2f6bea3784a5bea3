"""Child weights (safetensors) and ONNX export with an onnxruntime parity check."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .arch import Architecture
from .errors import DsnasError, quote
from .files import atomic_path, check_readable, write_bytes
from .spaces import MAX_MODEL_GB, build_child


def save_weights(module: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Safetensors of ``module``'s state, serialised in memory and written by the one atomic
    writer (its errors, its permissions)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_bytes(path, save(state, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_child(arch: Architecture, weights: str | Path, max_model_gb: float = MAX_MODEL_GB) -> torch.nn.Module:
    """Build the child for ``arch`` (refused past ``max_model_gb``) and load its safetensors
    weights (shapes must match)."""
    child = build_child(arch.space, arch.choices, arch.settings, "torch", max_model_gb)  # weights loaded below
    check_readable(weights, "weights file")
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise DsnasError(f"weights file {weights} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise DsnasError(f"weights file {weights} is not a readable safetensors file: {e}") from None
    load_checked(child, state, f"weights file {weights}", "the architecture")
    return child


def load_checked(module: torch.nn.Module, state: dict, source: str, target: str) -> None:
    """Load ``state`` into ``module`` only if it holds exactly its keys, with its shapes, its kinds
    of dtype and finite values; else a one-line error that names the first difference."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                     f"{target} needs {tuple(expected[wrong[0]].shape)}")
        raise DsnasError(f"{source} does not match {target} ({what})")
    _check_values(state, expected, source)
    module.load_state_dict(state)


def recorded_convention(arch: Architecture, weights: str | Path) -> str | None:
    """The input convention a child was published with (``dsnas import`` records it in the arch
    file's metadata and in the weights' metadata), or None: a dsnas-trained child, fed as its data
    is normalised."""
    from .data import INPUT_CONVENTIONS

    name = arch.metadata.get("input_convention")
    where = "the architecture file's metadata"
    if name is None:
        try:
            with safe_open(str(weights), "pt") as f:
                name = (f.metadata() or {}).get("input_convention")
        except (SafetensorError, OSError):
            return None  # load_child has read this file; nothing is recorded that can be read
        where = f"the metadata of {weights}"
    if name is not None and name not in INPUT_CONVENTIONS:
        raise DsnasError(f"{where} names the input convention {quote(name)}, which dsnas does not know "
                         f"(known: {', '.join(INPUT_CONVENTIONS)})")
    return name


def _check_values(state: dict, expected: dict, source: str) -> None:
    """Every tensor has the child's kind of dtype and, cast to the child's dtype (as loading will
    cast it), finite values: 1e300 in float64 is inf in float32. Replaces ``state``'s tensors by
    their casts; shapes are checked by the caller."""
    for k, want in expected.items():
        got = state[k]
        same_kind = got.is_floating_point() if want.is_floating_point() else got.dtype == want.dtype
        if not same_kind:
            raise DsnasError(f"{source}: {k} is {_name(got.dtype)}, the architecture needs "
                             f"{_name(want.dtype)}")
        try:
            state[k] = got.to(want.dtype)
        except (RuntimeError, TypeError) as e:  # a float type this torch cannot convert
            raise DsnasError(f"{source}: {k} is {_name(got.dtype)}, which cannot be cast to "
                             f"{_name(want.dtype)} ({str(e).splitlines()[0][:80]})") from None
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            raise DsnasError(f"{source}: {k} holds NaN or infinite values"
                             + ("" if got.dtype == want.dtype else f" as {_name(want.dtype)}"))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def convention_metadata(convention: str | None) -> dict[str, str]:
    """How an exported network's input is prepared, as ONNX ``metadata_props``: the convention's
    name, channel order, and mean/std on images scaled to [0, 1] (in the fed channel order)."""
    from .data import INPUT_CONVENTIONS

    if convention is None:
        return {}
    c = INPUT_CONVENTIONS[convention]
    return {"input_convention": convention, "input_channel_order": c["channels"],
            "input_mean": ",".join(f"{v:.9g}" for v in c["mean"]),
            "input_std": ",".join(f"{v:.9g}" for v in c["std"]), "input_scale": "images in [0, 1]"}


def export_onnx(child: torch.nn.Module, path: str | Path, input_size: int, in_channels: int,
                check: bool = True, atol: float = 1e-4, replace: bool = True,
                metadata: dict[str, str] | None = None) -> float | None:
    """Write ONNX (dynamic batch) with ``metadata`` as its ``metadata_props``; with ``check`` run
    it in onnxruntime and return the largest absolute difference from PyTorch (raises if it
    exceeds ``atol``). The check runs on the temporary file: a file that fails it never takes
    ``path``'s name, and ``path`` keeps what it held."""
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise DsnasError("onnxruntime is not installed; install dsnas[onnx] or pass --no-check") from None
    child = child.eval().cpu()
    x = torch.randn(2, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with atomic_path(path, replace) as tmp:
        torch.onnx.export(child, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        if metadata:
            _add_metadata(tmp, metadata)
        diff = _parity(child, tmp, x, atol) if check else None
    return diff


def _add_metadata(onnx_file: Path, metadata: dict[str, str]) -> None:
    """Record ``metadata`` in the model's ``metadata_props`` (what onnxruntime's
    ``get_modelmeta().custom_metadata_map`` reads back)."""
    try:
        import onnx
    except ImportError:
        raise DsnasError("onnx is not installed (it records the input convention); install dsnas[onnx]") from None
    model = onnx.load(str(onnx_file))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    onnx.save(model, str(onnx_file))


def _parity(child: torch.nn.Module, onnx_file: Path, x: torch.Tensor, atol: float) -> float:
    """The largest absolute difference between onnxruntime on ``onnx_file`` and PyTorch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = child(x).numpy()
    diff = float(abs(got - want).max())
    if not diff <= atol:  # NaN fails too
        raise DsnasError(f"ONNX output differs from PyTorch by {diff:.2e} (> {atol:.0e})")
    return diff
