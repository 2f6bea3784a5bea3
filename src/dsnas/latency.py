"""Latency tables: every candidate of every block timed on this machine at the input shape it
sees in the network, plus the fixed parts (stem; head with pooling and classifier), then fitted
to random children timed end to end, and checked on other children held out of the fit.

The fixed cost of one timed call (measured on an identity) is taken off every entry and counted
once, as the fixed part ``call``: a network pays it once, not once per block. These lookup
entries miss what a network adds around its parts (a cold cache, fusion, dispatch, layout
changes), so ``fit_children`` random children are timed whole and the entries fitted to them
(`latency_fit`): the lookup, times the median ratio of measured to summed latency (the ``scale``),
is the prior a ridge fit corrects. ``holdout`` more children, never used to fit, give the
table's Kendall tau and median error against end-to-end timings (``validation``). Everything is
timed in interleaved rounds, so that a slow spell of a shared machine falls on all of it alike.

A table is a versioned YAML file (``format: dsnas-latency/3``) that records what was measured
and where: the space and its settings, the device, library versions, backend, threads, batch,
precision and date; per entry the fitted time in ms (what a search adds up), the spread
(interquartile range) and the ``lookup`` time of the part timed alone; ``fit`` (children, ridge,
scale, seed) and ``validation`` (held-out children; tau and errors of the table and of the
lookup alone). Blocks are keyed by their label. Older tables still load: ``dsnas-latency/2``
(entries timed alone, times ``measured.scale``) and ``dsnas-latency/1`` (the same, blocks as a
list in block order).

In a cell space (nb201) a decision is one edge of every cell: its entry is the sum over the
cells of that edge's op timed alone at its input, the reductions between stages are fixed parts
like the stem, and the additions at a cell's nodes are not timed (a few element-wise sums; the
fit to whole children absorbs them with the cache effects). The latency of an architecture is
predicted as the sum of its entries, like MFLOPs in `cost.CostTable`, so a table measured on a
small target device can drive a search run anywhere.
"""

from __future__ import annotations

import io
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
from torch import nn

from . import latency_fit
from .choice import active_path
from .agreement import agreement
from .errors import DsnasError, quote
from .files import dump_yaml, read_yaml, write_text
from .spaces import DEFAULT_SPACE, settings_of, space_class

FORMAT = "dsnas-latency/3"
FORMAT_V2 = "dsnas-latency/2"  # entries timed alone, times measured.scale; no fit, no validation
FORMAT_V1 = "dsnas-latency/1"  # as /2, blocks as a list in the space's order
READS = (FORMAT, FORMAT_V2, FORMAT_V1)
BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16")


@dataclass
class LatencyTable:
    """``blocks[label][op]`` and ``fixed[part]`` hold ``{"ms": ..., "spread": iqr}``: with a
    ``fit`` (format 3) ``ms`` is the fitted time and ``lookup`` the time of the part alone;
    without (formats 1 and 2) ``ms`` is the time alone, calibrated by ``measured["scale"]``."""

    settings: dict
    blocks: dict[str, dict[str, dict]]
    fixed: dict[str, dict]
    measured: dict = field(default_factory=dict)  # device, backend, versions, threads, batch, precision, date
    space: str = DEFAULT_SPACE
    fit: dict | None = None         # children, ridge, scale (the lookup's calibration), seed
    validation: dict | None = None  # children, seed, tau, median_error_pct, max_error_pct, lookup: the same

    def entries(self, names: list[list[str]], labels: list[str],
                fitted: bool = True) -> tuple[list[list[float]], float]:
        """The candidates' latencies (ms) of the blocks ``labels``, each in the order of its
        ``names``, and the fixed parts' sum: the table's prediction, or (not ``fitted``) the
        lookup it was fitted from, the parts timed alone times the calibration scale. A table
        without a fit has only the latter."""
        other = sorted(set(labels) ^ set(self.blocks))
        if other:
            raise DsnasError(f"latency table: block {quote(other[0])} is in one of the table and this space only")
        for label, n in zip(labels, names):
            if sorted(self.blocks[label]) != sorted(n):
                raise DsnasError(f"latency table: block {label} has other candidates than in this space")
        # every scale and time is checked on load: numbers in SCALE_RANGE and 0..MS_MAX
        if self.fit is None:
            k, key = self.measured.get("scale", 1.0), "ms"
        else:
            k, key = (1.0, "ms") if fitted else (self.fit["scale"], "lookup")
        return [[k * self.blocks[label][op][key] for op in n] for label, n in zip(labels, names)], k * sum(
            v[key] for v in self.fixed.values())

    def check_settings(self, settings: dict, path: str | Path, space: str = DEFAULT_SPACE) -> None:
        """Refuse to cost a space other than the one this table was measured for."""
        if self.space != space:
            raise DsnasError(f"latency table {path} is for the {self.space} space, this run uses {space}")
        if self.settings != settings:
            raise DsnasError(f"latency table {path} is for space settings {self.settings}, this run uses {settings}")

    def to_dict(self) -> dict:
        """The file's content, in format 3 if the table has a fit and in format 2 (as it was read) if not."""
        out = {"format": FORMAT if self.fit is not None else FORMAT_V2, "space": self.space,
               "settings": dict(self.settings), "measured": self.measured}
        if self.fit is not None:
            out.update(fit=self.fit, validation=self.validation)
        return {**out, "fixed": self.fixed, "blocks": self.blocks}


def save_latency(table: LatencyTable, path: str | Path, replace: bool = True) -> None:
    write_text(path, dump_yaml(table.to_dict(), sort_keys=False), replace)


def load_latency(path: str | Path, settings: dict | None = None, space: str = DEFAULT_SPACE) -> LatencyTable:
    """Read a table, every number in it checked; with ``settings``, refuse one measured for
    another space or settings."""
    data = read_yaml(path, "latency table")
    try:
        if not isinstance(data, dict) or data.get("format") not in READS:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise DsnasError(f"has format {quote(found)}; this version reads {', '.join(map(repr, READS))}")
        fitted = data["format"] == FORMAT
        blocks, fixed = data.get("blocks"), data.get("fixed")
        kind = list if data["format"] == FORMAT_V1 else dict
        if not isinstance(blocks, kind) or not isinstance(fixed, dict) or not isinstance(data.get("settings"), dict):
            raise DsnasError(f"needs settings, fixed and blocks ({'a list' if kind is list else 'a mapping by label'})")
        if not all(isinstance(b, dict) and b and all(isinstance(op, str) for op in b) for b in _values(blocks)):
            raise DsnasError("every block needs a mapping of candidates, by op name")
        for entry in [*fixed.values(), *(e for b in _values(blocks) for e in b.values())]:
            _check_entry(entry, fitted)
        name = data.get("space", DEFAULT_SPACE)
        if not isinstance(name, str):
            raise DsnasError(f"names a space that is not a name: {quote(name)}")
        space_settings = settings_of(name, data["settings"])
        check_timing(data.get("measured") or {}, space_settings.as_dict(), "measured.")
        if fitted:
            _check_fitted(data)
        blocks = _by_label(blocks, name, space_settings)
    except DsnasError as e:
        raise DsnasError(f"latency table {path} {e}") from None
    space_settings = space_settings.as_dict()
    table = LatencyTable(space_settings, blocks, fixed, data.get("measured") or {}, name,
                         data.get("fit") if fitted else None, data.get("validation") if fitted else None)
    if settings is not None:
        table.check_settings(settings, path, space)
    return table


def _values(blocks) -> list:
    return list(blocks.values()) if isinstance(blocks, dict) else list(blocks)


def _by_label(blocks, space: str, settings) -> dict:
    """The blocks of a table keyed by label: a version-1 list is labelled in the space's order."""
    if isinstance(blocks, dict):
        return {str(label): entry for label, entry in blocks.items()}
    labels = [label for label, _ in space_class(space).decisions(settings)]
    if len(blocks) != len(labels):
        raise DsnasError(f"has {len(blocks)} blocks, the {space} space has {len(labels)}")
    return dict(zip(labels, blocks))


MEASURED_LIMITS = {"threads": 1024, "batch": 1024, "repeats": 1_000_000, "rounds": 1000}
INPUT_MAX_ELEMENTS = 1 << 26  # batch x channels x pixels of the timed input: 256 MB in fp32
MS_MAX = 1e7                  # ms: nearly three hours for one entry; sums of entries stay finite
SCALE_RANGE = (1e-3, 1e3)     # the calibration measured / summed latency (about 1 to 3 in practice)


def _number_in(value, low: float, high: float) -> bool:
    """A real number (not a bool) in [low, high]: NaN, infinities and strings are not."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high


def _check_entry(entry, fitted: bool) -> None:
    """An entry's times: ms and spread, and in a fitted table the lookup it was fitted from."""
    if not (isinstance(entry, dict) and _number_in(entry.get("ms"), 0, MS_MAX)
            and _number_in(entry.get("spread", 0), 0, MS_MAX)
            and (not fitted or _number_in(entry.get("lookup"), 0, MS_MAX))):
        needs = "ms >= 0, spread >= 0 and lookup >= 0" if fitted else "ms >= 0 and spread >= 0"
        raise DsnasError(f"every entry needs a finite {needs} (at most {MS_MAX:g}), got {quote(entry)}")


CHILDREN_MAX = 100_000       # children fitted or held out
RIDGE_MAX = 1e6              # children's worth of evidence in the prior; far past "the lookup as it is"
ERROR_PCT_MAX = 1e6          # a held-out error in %
SEED_MAX = 2**63 - 1


def _whole_in(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _check_fitted(data: dict) -> None:
    """The fields of a fitted table (format 3): ``fit`` and ``validation`` (none when no child
    was held out), every number bounded. Its entries are fitted, so a calibration scale in
    ``measured`` would be applied twice: it lives in ``fit``."""
    if "scale" in data.get("measured", {}):
        raise DsnasError(f"has measured.scale, which {FORMAT} keeps as fit.scale")
    fit = data.get("fit")
    if not (isinstance(fit, dict) and _whole_in(fit.get("children"), 0, CHILDREN_MAX)
            and _number_in(fit.get("ridge"), 0, RIDGE_MAX) and _number_in(fit.get("scale"), *SCALE_RANGE)
            and _whole_in(fit.get("seed", 0), 0, SEED_MAX)):
        raise DsnasError(f"needs fit with children a whole number in 0..{CHILDREN_MAX}, ridge a number in "
                         f"0..{RIDGE_MAX:g}, scale a number in {SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g} and seed a "
                         f"whole number >= 0, got {quote(fit)}")
    validation = data.get("validation")
    if validation is None:
        return
    if not (isinstance(validation, dict) and _whole_in(validation.get("children"), 2, CHILDREN_MAX)
            and _whole_in(validation.get("seed", 0), 0, SEED_MAX)
            and _agreement_ok(validation) and _agreement_ok(validation.get("lookup"))):
        raise DsnasError(f"needs validation with children a whole number in 2..{CHILDREN_MAX}, tau a number in "
                         f"-1..1 or null, median_error_pct and max_error_pct numbers in 0..{ERROR_PCT_MAX:g}, and "
                         f"the same for the lookup, got {quote(validation)}")


def _agreement_ok(found) -> bool:
    """A held-out agreement (`agreement.agreement`): tau is null when the timings all tie."""
    return (isinstance(found, dict) and (found.get("tau") is None or _number_in(found["tau"], -1, 1))
            and _number_in(found.get("median_error_pct"), 0, ERROR_PCT_MAX)
            and _number_in(found.get("max_error_pct"), 0, ERROR_PCT_MAX))


def check_timing(measured, settings: dict, prefix: str = "") -> None:
    """The record a table's timings use (or reuse, end to end), every size in it bounded: known
    device, backend and precision; counts in `MEASURED_LIMITS`; an input of batch x channels x
    pixels within `INPUT_MAX_ELEMENTS`; a calibration scale in `SCALE_RANGE`. ``prefix`` names
    the record in messages."""
    if not isinstance(measured, dict):
        raise DsnasError("has a measured record that is not a mapping")
    for key, top in MEASURED_LIMITS.items():
        v = measured.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise DsnasError(f"needs {prefix}{key} a whole number in 1..{top}, got {quote(v)}")
    pixels = settings["in_channels"] * settings["input_size"] ** 2
    if measured.get("batch", 1) * pixels > INPUT_MAX_ELEMENTS:
        raise DsnasError(f"needs {prefix}batch at most {INPUT_MAX_ELEMENTS // pixels} for {settings['in_channels']} "
                         f"x {settings['input_size']} x {settings['input_size']} images (an input of at most "
                         f"{INPUT_MAX_ELEMENTS} values), got {measured['batch']}")
    if not _number_in(measured.get("scale", 1.0), *SCALE_RANGE):
        raise DsnasError(f"needs {prefix}scale a number in {SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g}, "
                         f"got {quote(measured.get('scale'))}")
    if measured.get("backend", "torch") not in BACKENDS or measured.get("precision", "fp32") not in PRECISIONS:
        raise DsnasError(f"needs {prefix}backend in {BACKENDS} and {prefix}precision in {PRECISIONS}")
    device = measured.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise DsnasError(f"needs {prefix}device cpu or cuda, got {quote(device)}")


# --- measuring --------------------------------------------------------------------------------------
def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"ms": round(q[1], 5), "spread": round(q[2] - q[0], 5)}


class _Timer:
    """Median and interquartile range of repeated calls of modules on their inputs. Several
    modules are timed in interleaved rounds (``rounds`` passes over all of them, a share of the
    calls each time), so a slow spell of the machine falls on all of them alike instead of on
    whichever was being timed."""

    def __init__(self, device: torch.device, backend: str, precision: str, threads: int, warmup: int, repeats: int,
                 rounds: int = 5):
        self.device, self.backend, self.precision = device, backend, precision
        self.threads, self.warmup, self.repeats, self.rounds = threads, warmup, repeats, max(1, min(rounds, repeats))

    def __call__(self, module: nn.Module, x: torch.Tensor) -> dict:
        return self.many([(module, x)])[0]

    def many(self, jobs: list[tuple[nn.Module, torch.Tensor]], progress=None) -> list[dict]:
        runs = [self._onnx(m, x) if self.backend == "onnxruntime" else self._torch(m, x) for m, x in jobs]
        for run in runs:
            for _ in range(self.warmup):
                run()
        samples = [[] for _ in runs]
        for r in range(self.rounds):
            calls = self.repeats // self.rounds + (r < self.repeats % self.rounds)
            for run, times in zip(runs, samples):
                times.extend(self._once(run) for _ in range(calls))
            if progress is not None:
                progress(r + 1, self.rounds)
        return [_summary(sorted(t)) for t in samples]

    def _once(self, run) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3

    def _torch(self, module: nn.Module, x: torch.Tensor):
        dtype = torch.bfloat16 if self.precision == "bf16" else None

        def run():  # as a user runs a child for inference
            with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                module(x)
        return run

    def _onnx(self, module: nn.Module, x: torch.Tensor):
        import onnxruntime as ort

        buf = io.BytesIO()
        torch.onnx.export(module.cpu(), (x.cpu(),), buf, input_names=["x"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        feed = {"x": x.cpu().numpy()}
        return lambda: session.run(None, feed)


class _Head(nn.Module):
    """The part of a space after its last block (``forward_head``), as a module to time."""

    def __init__(self, space: nn.Module):
        super().__init__()
        self.space = space

    def forward(self, features):
        return self.space.forward_head(features)


FIT_CHILDREN, HOLDOUT = 60, 20  # defaults: about a minute of a 2-core CPU for the demo space at batch 1
CHILDREN_SEED = 12345           # the children's draw: fitted ones first, then the held-out ones


def measure_latency(space, device: str = "cpu", backend: str = "torch", batch: int = 1, threads: int = 1,
                    precision: str = "fp32", warmup: int = 10, repeats: int = 50, progress=None,
                    fit_children: int = FIT_CHILDREN, holdout: int = HOLDOUT, ridge: float | None = None,
                    seed: int = CHILDREN_SEED) -> LatencyTable:
    """Time every candidate of ``space`` (a registered space) at its input shape in the network,
    and ``fit_children`` + ``holdout`` seeded random children end to end, all in interleaved
    rounds (``progress(done, total)`` after each); fit the entries to the first children
    (``ridge``: chosen by cross-validation unless given) and check them on the others."""
    _check_request(space, device, backend, batch, threads, precision, repeats, fit_children, holdout, ridge)
    dev = torch.device(device)
    torch.set_num_threads(threads)
    space = space.to(dev).eval()
    s = space.settings
    x = torch.randn(batch, s.in_channels, s.input_size, s.input_size, device=dev)
    parts, inputs, features = _block_inputs(space, x)
    archs = _draw(space, fit_children + holdout, seed)
    timer = _Timer(dev, backend, precision, threads, warmup, repeats)
    # Timing a part alone adds a fixed cost per call (the timer, the call into the backend) that
    # the network pays once, not once per part: measured on an identity, it is taken off every
    # entry and counted once, as the fixed part "call".
    jobs = [(nn.Identity(), x), *parts.values(), (_Head(space).to(dev), features)]
    jobs += [(op, inp) for tied in inputs for choice, inp in tied for op in choice.candidates]
    jobs += [(space.child(arch).to(dev).eval(), x) for arch in archs]
    timed = timer.many(jobs, progress)
    call = timed[0]
    minus = (lambda e: {"ms": round(max(e["ms"] - call["ms"], 0.0), 5), "spread": e["spread"]})
    fixed = {**{name: minus(e) for name, e in zip(parts, timed[1:])}, "head": minus(timed[len(parts) + 1]),
             "call": call}
    entries = iter(timed[len(parts) + 2:])
    per_module = [[{name: minus(next(entries)) for name in choice.names} for choice, _ in tied] for tied in inputs]
    blocks = {label: {name: _summed([m[name] for m in modules]) for name in choice.names}
              for label, choice, modules in zip(space.labels, space.choices, per_module)}
    children = [t["ms"] for t in timed[-len(archs):]] if archs else []
    measured = _where(dev, backend, threads, batch, precision, repeats)
    measured["rounds"] = timer.rounds
    return _fitted(LatencyTable(s.as_dict(), blocks, fixed, measured, space.name), space, archs, children,
                   fit_children, ridge, seed)


def _check_request(space, device, backend, batch, threads, precision, repeats, fit_children, holdout, ridge) -> None:
    """What `measure_latency` is asked for, refused before anything is timed."""
    try:
        check_timing({"device": str(device).split(":")[0], "backend": backend, "precision": precision, "threads": threads,
                      "batch": batch, "repeats": repeats}, space.settings.as_dict())
    except DsnasError as e:
        raise DsnasError(f"latency: {e}") from None
    if backend == "onnxruntime" and (device != "cpu" or precision != "fp32"):
        raise DsnasError("latency: the onnxruntime backend measures fp32 on the CPU")
    if not _whole_in(fit_children, 0, CHILDREN_MAX) or not (holdout == 0 or _whole_in(holdout, 2, CHILDREN_MAX)):
        raise DsnasError(f"latency: needs fit children a whole number in 0..{CHILDREN_MAX} and held-out children 0 "
                         f"or a whole number in 2..{CHILDREN_MAX} (a rank needs two), got {fit_children} and {holdout}")
    if ridge is not None and not _number_in(ridge, 0, RIDGE_MAX):
        raise DsnasError(f"latency: needs ridge a number in 0..{RIDGE_MAX:g}, got {quote(ridge)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise DsnasError(f"latency: device {device!r} requested but CUDA is not available")


def _draw(space, n: int, seed: int) -> list[list[int]]:
    """``n`` seeded uniform architectures, one candidate index per decision."""
    gen = torch.Generator().manual_seed(seed)
    return [[int(torch.randint(len(c.names), (), generator=gen)) for c in space.choices] for _ in range(n)]


def _fitted(table: LatencyTable, space, archs: list[list[int]], children: list[float], n_fit: int,
            ridge: float | None, seed: int) -> LatencyTable:
    """``table`` of lookup entries made a fitted table (format 3): the lookup, times the median
    ratio of measured to summed latency over the first ``n_fit`` children (parts timed alone run
    with a hot cache; in a network they do not), is the prior that a ridge fit to those children
    corrects; the other children give the validation."""
    names = [c.names for c in space.choices]
    rows, base = table.entries(names, space.labels)  # no fit yet: the lookup, uncalibrated
    fit_archs, fit_ms = archs[:n_fit], children[:n_fit]
    scale = statistics.median(m / latency_fit.predict(rows, base, a) for a, m in zip(fit_archs, fit_ms)) \
        if fit_archs else 1.0
    scale = float(min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1]))
    prior, prior_fixed = [[scale * v for v in row] for row in rows], scale * base
    if ridge is None:
        ridge = latency_fit.choose_ridge(fit_archs, fit_ms, prior, prior_fixed)
    fit_rows, fit_fixed = latency_fit.fit_entries(fit_archs, fit_ms, prior, prior_fixed, ridge)
    for label, choice, row in zip(space.labels, space.choices, fit_rows):
        for name, ms in zip(choice.names, row):
            entry = table.blocks[label][name]
            entry["lookup"], entry["ms"] = entry["ms"], round(ms, 5)
    # The fit has one fixed part; it is shared among the timed ones in proportion to their prior.
    share = fit_fixed / prior_fixed if prior_fixed > 0 else 1.0
    for entry in table.fixed.values():
        entry["lookup"], entry["ms"] = entry["ms"], round(scale * share * entry["ms"], 5)
    table.fit = {"children": len(fit_archs), "ridge": float(ridge), "scale": round(scale, 5), "seed": seed}
    table.validation = _validation(table, names, space.labels, archs[n_fit:], children[n_fit:], seed)
    return table


def _validation(table: LatencyTable, names, labels, archs: list[list[int]], measured: list[float],
                seed: int) -> dict | None:
    """How the table, and the lookup it was fitted from, predict children it never saw."""
    if len(archs) < 2:
        return None

    def agrees(fitted: bool) -> dict:
        rows, base = table.entries(names, labels, fitted)
        found = agreement([latency_fit.predict(rows, base, a) for a in archs], measured)
        return {k: (None if v != v else round(float(v), 4)) for k, v in found.items()}  # no tau when all tie
    return {"children": len(archs), "seed": seed, **agrees(True), "lookup": agrees(False)}


def _summed(entries: list[dict]) -> dict:
    """A decision taken by several tied modules (an edge of every cell) costs their sum."""
    if len(entries) == 1:
        return entries[0]
    return {"ms": round(sum(e["ms"] for e in entries), 5), "spread": round(sum(e["spread"] for e in entries), 5)}


@torch.no_grad()
def _block_inputs(space, x: torch.Tensor) -> tuple[dict, list[list[tuple[nn.Module, torch.Tensor]]], torch.Tensor]:
    """What to time, recorded in one forward with candidate 0 everywhere (all candidates of a
    block see the same shape): each fixed part (`fixed_parts`) with its input, the input of
    every `Choice` module grouped by decision, and the features the head sees.

    Each part is timed alone on its input, so what joins them is left out: in a chain of blocks
    nothing, in a cell space the sums of a cell's nodes (a few additions). The calibration on
    whole children (`_fitted`) corrects the table by what is measured end to end."""
    named = space.fixed_parts()
    recorded: dict[int, torch.Tensor] = {}
    with active_path(space) as found:
        modules = [m for _, tied in found for m in tied] + list(named.values())
        handles = [m.register_forward_pre_hook(lambda mod, a: recorded.__setitem__(id(mod), a[0])) for m in modules]
        try:
            features = space.forward_features(x)
        finally:
            for h in handles:
                h.remove()
    parts = {name: (m, recorded[id(m)]) for name, m in named.items()}
    return parts, [[(m, recorded[id(m)]) for m in tied] for _, tied in found], features


def _where(dev: torch.device, backend: str, threads: int, batch: int, precision: str, repeats: int) -> dict:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    versions = {"torch": str(torch.__version__), "python": platform.python_version()}
    if backend == "onnxruntime":
        import onnxruntime

        versions["onnxruntime"] = str(onnxruntime.__version__)
    return {"device": dev.type, "device_name": name, "backend": backend, "threads": threads, "batch": batch,
            "precision": precision, "repeats": repeats, "versions": versions, "date": date.today().isoformat()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_network(net: nn.Module, measured: dict, warmup: int = 10, repeats: int = 50) -> dict:
    """End-to-end latency of ``net`` with the device, backend, threads, batch and precision a
    table was measured with (its ``measured`` record): ``{"ms": median, "spread": iqr}``."""
    return measure_networks([net], measured, warmup, repeats)[0]


def measure_networks(nets: list[nn.Module], measured: dict, warmup: int = 10, repeats: int = 50) -> list[dict]:
    """`measure_network` for several networks, timed in interleaved rounds."""
    s = nets[0].settings
    try:
        check_timing(measured, s.as_dict(), "measured.")  # the sizes it allocates, bounded
    except DsnasError as e:
        raise DsnasError(f"latency table {e}") from None
    dev = torch.device(measured.get("device", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsnasError("the latency table was measured on CUDA, which this machine lacks")
    threads, batch = int(measured.get("threads", 1)), int(measured.get("batch", 1))
    torch.set_num_threads(threads)
    timer = _Timer(dev, measured.get("backend", "torch"), measured.get("precision", "fp32"), threads, warmup, repeats,
                   int(measured.get("rounds", 5)))
    x = torch.randn(batch, s.in_channels, s.input_size, s.input_size, device=dev)
    return timer.many([(net.to(dev).eval(), x) for net in nets])
