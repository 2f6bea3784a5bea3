"""Latency tables: every candidate of every block timed on this machine at the input shape it
sees in the network, plus the fixed parts (stem; head with pooling and classifier).

The fixed cost of one timed call (measured on an identity) is taken off every entry and counted
once, as the fixed part ``call``: a network pays it once, not once per block. Parts timed alone
also run with a hot cache, so random children are timed end to end and the median ratio of
measured to summed latency is stored as the table's ``scale``. Everything is timed in
interleaved rounds, so that a slow spell of a shared machine falls on all entries alike.

A table is a versioned YAML file (``format: dsnas-latency/1``) that records what was measured
and where: the space settings, the device, library versions, backend, threads, batch, precision
and date, and per entry the median time in ms and its spread (interquartile range). The latency
of an architecture is predicted as the sum of its entries, like MFLOPs in `cost.CostTable`, so a
table measured on a small target device can drive a search run anywhere.
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

from .errors import DsnasError
from .files import read_yaml, write_text
from .spaces import ShuffleNetSettings

FORMAT = "dsnas-latency/1"
BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16")


@dataclass
class LatencyTable:
    """``blocks[i][op]`` and ``fixed[part]`` hold ``{"ms": median, "spread": iqr}``."""

    settings: dict
    blocks: list[dict[str, dict]]
    fixed: dict[str, dict]
    measured: dict = field(default_factory=dict)  # device, backend, versions, threads, batch, precision, date

    def entries(self, names: list[list[str]], calibrated: bool = True) -> tuple[list[list[float]], float]:
        """Per-block candidate latencies (ms) in the order of ``names``, and the fixed parts' sum,
        times the table's calibration ``scale`` (unless not ``calibrated``)."""
        if [sorted(b) for b in self.blocks] != [sorted(n) for n in names]:
            raise DsnasError("latency table: its blocks and candidates are not those of this space")
        k = float(self.measured.get("scale", 1.0)) if calibrated else 1.0
        return [[k * self.blocks[i][op]["ms"] for op in n] for i, n in enumerate(names)], k * sum(
            v["ms"] for v in self.fixed.values())

    def check_settings(self, settings: dict, path: str | Path) -> None:
        """Refuse to cost a space other than the one this table was measured for."""
        if self.settings != settings:
            raise DsnasError(f"latency table {path} is for space settings {self.settings}, this run uses {settings}")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "space": "shufflenet", "settings": dict(self.settings), "measured": self.measured,
                "fixed": self.fixed, "blocks": self.blocks}


def save_latency(table: LatencyTable, path: str | Path) -> None:
    import yaml

    write_text(path, yaml.safe_dump(table.to_dict(), sort_keys=False))


def load_latency(path: str | Path, settings: dict | None = None) -> LatencyTable:
    """Read a table; with ``settings``, refuse one measured for another space."""
    data = read_yaml(path, "latency table")
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise DsnasError(f"has format {found!r}; this version reads {FORMAT!r}")
        blocks, fixed = data.get("blocks"), data.get("fixed")
        if not isinstance(blocks, list) or not isinstance(fixed, dict) or not isinstance(data.get("settings"), dict):
            raise DsnasError("needs settings, fixed and blocks")
        for entry in [*fixed.values(), *(e for b in blocks if isinstance(b, dict) for e in b.values())]:
            ms = entry.get("ms") if isinstance(entry, dict) else None
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < float("inf"):
                raise DsnasError(f"every entry needs a finite ms >= 0, got {entry!r}")
        if not all(isinstance(b, dict) and b for b in blocks):
            raise DsnasError("every block needs a mapping of candidates")
        _check_measured(data.get("measured") or {})
        space_settings = ShuffleNetSettings.from_mapping(data["settings"]).as_dict()
    except ValueError as e:
        raise DsnasError(f"latency table {path} has bad space settings: {e}") from None
    except DsnasError as e:
        raise DsnasError(f"latency table {path} {e}") from None
    table = LatencyTable(space_settings, blocks, fixed, data.get("measured") or {})
    if settings is not None:
        table.check_settings(settings, path)
    return table


MEASURED_LIMITS = {"threads": 1024, "batch": 65536, "repeats": 1_000_000, "rounds": 1000}


def _check_measured(measured) -> None:
    """The record a table's end-to-end timings reuse: known backend and precision, counts in range."""
    if not isinstance(measured, dict):
        raise DsnasError("has a measured record that is not a mapping")
    for key, top in MEASURED_LIMITS.items():
        v = measured.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise DsnasError(f"needs measured.{key} a whole number in 1..{top}, got {v!r}")
    if measured.get("backend", "torch") not in BACKENDS or measured.get("precision", "fp32") not in PRECISIONS:
        raise DsnasError(f"needs measured.backend in {BACKENDS} and measured.precision in {PRECISIONS}")
    device = measured.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise DsnasError(f"needs measured.device cpu or cuda, got {device!r}")


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

        def run():
            with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
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
    """Head, pooling and classifier of a ShuffleNet: the part after the last block."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head, self.pool, self.classifier = net.head, net.pool, net.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


def measure_latency(space, device: str = "cpu", backend: str = "torch", batch: int = 1, threads: int = 1,
                    precision: str = "fp32", warmup: int = 10, repeats: int = 50, progress=None,
                    calibrate: int = 24) -> LatencyTable:
    """Time every candidate of ``space`` (a `ShuffleNetSpace`) at its input shape in the network,
    all in interleaved rounds (``progress(done, total)`` after each); then ``calibrate`` random
    children end to end fix the table's ``scale`` (0: no calibration)."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise DsnasError(f"latency: backend must be one of {BACKENDS} and precision one of {PRECISIONS}")
    if backend == "onnxruntime" and (device != "cpu" or precision != "fp32"):
        raise DsnasError("latency: the onnxruntime backend measures fp32 on the CPU")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsnasError(f"latency: device {device!r} requested but CUDA is not available")
    torch.set_num_threads(threads)
    space = space.to(dev).eval()
    s = space.settings
    x = torch.randn(batch, s.in_channels, s.input_size, s.input_size, device=dev)
    inputs, features = _block_inputs(space, x)
    timer = _Timer(dev, backend, precision, threads, warmup, repeats)
    # Timing a part alone adds a fixed cost per call (the timer, the call into the backend) that
    # the network pays once, not once per part: measured on an identity, it is taken off every
    # entry and counted once, as the fixed part "call".
    jobs = [(nn.Identity(), x), (space.stem, x), (_Head(space).to(dev), features)]
    jobs += [(op, inp) for choice, inp in zip(space.choices, inputs) for op in choice.candidates]
    timed = timer.many(jobs, progress)
    call = timed[0]
    minus = (lambda e: {"ms": round(max(e["ms"] - call["ms"], 0.0), 5), "spread": e["spread"]})
    fixed = {"stem": minus(timed[1]), "head": minus(timed[2]), "call": call}
    entries = iter(timed[3:])
    blocks = [{name: minus(next(entries)) for name in choice.names} for choice in space.choices]
    table = LatencyTable(s.as_dict(), blocks, fixed, _where(dev, backend, threads, batch, precision, repeats))
    table.measured["rounds"] = timer.rounds
    table.measured["scale"] = round(_calibrate(space, table, timer, x, calibrate), 5) if calibrate else 1.0
    return table


def _calibrate(space, table: LatencyTable, timer: _Timer, x: torch.Tensor, n: int) -> float:
    """Parts timed alone run with their weights and inputs hot in the cache; in a network they
    do not. The median ratio of measured to summed latency over ``n`` seeded random children
    scales every entry."""
    names = [c.names for c in space.choices]
    rows, base = table.entries(names, calibrated=False)
    gen = torch.Generator().manual_seed(12345)
    archs = [[int(torch.randint(len(r), (), generator=gen)) for r in rows] for _ in range(n)]
    measured = timer.many([(space.child(arch).to(x.device).eval(), x) for arch in archs])
    return statistics.median(m["ms"] / (base + sum(r[i] for r, i in zip(rows, arch)))
                             for m, arch in zip(measured, archs))


@torch.no_grad()
def _block_inputs(space, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The input of every block when candidate 0 runs everywhere (all candidates of a block see
    the same shape), and the output of the last block."""
    inputs = []
    h = space.stem(x)
    for choice in space.choices:
        inputs.append(h)
        h = choice.candidates[0](h)
    return inputs, h


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
    dev = torch.device(measured.get("device", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsnasError("the latency table was measured on CUDA, which this machine lacks")
    threads, batch = int(measured.get("threads", 1)), int(measured.get("batch", 1))
    torch.set_num_threads(threads)
    timer = _Timer(dev, measured.get("backend", "torch"), measured.get("precision", "fp32"), threads, warmup, repeats,
                   int(measured.get("rounds", 5)))
    s = nets[0].settings
    x = torch.randn(batch, s.in_channels, s.input_size, s.input_size, device=dev)
    return timer.many([(net.to(dev).eval(), x) for net in nets])
