"""Children timed as a user times them, in a process of their own (so nothing of the process
that measured the table, its caches, threads or allocator, is shared): the child built from the
space, ``child.eval()``, untimed warm-up calls, then the median of timed calls; under ``torch.inference_mode`` for torch, in an onnxruntime session of the exported
child for onnxruntime. Used by latency_lut.py.

Reads a JSON request on stdin (space, settings, seed, archs, backend, device, batch, threads,
warmup, repeats, and rounds: 1 times one child after the other, more interleave them) and writes
the children's median latencies in ms, a JSON list, on stdout.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time

import torch

from dsnas import spaces


def torch_call(child: torch.nn.Module, x: torch.Tensor):
    child = child.to(x.device).eval()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def call():
        child(x)
        sync()
    return call


def onnx_call(child: torch.nn.Module, x: torch.Tensor, threads: int):
    import onnxruntime as ort

    buf = io.BytesIO()
    torch.onnx.export(child.eval().cpu(), (x.cpu(),), buf, input_names=["images"], opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"images": x.cpu().numpy()}
    return lambda: session.run(None, feed)


def median_ms(calls: list, warmup: int, repeats: int, rounds: int = 1) -> list[float]:
    """The median latency (ms) of each call. With ``rounds`` > 1 the calls are timed in interleaved
    passes, a share of the repeats each time, so that a slow spell of the machine falls on all of
    them alike; with 1, one call after the other."""
    times = [[] for _ in calls]
    for r in range(rounds):
        share = repeats // rounds + (r < repeats % rounds)
        for call, samples in zip(calls, times):
            for _ in range(warmup if r == 0 else 0):  # right before the call's first timed pass
                call()
            for _ in range(share):
                t0 = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    req = json.load(sys.stdin)
    torch.set_num_threads(req["threads"])
    torch.manual_seed(req["seed"])
    space = spaces.build(req["space"], req["settings"], init="torch").eval()
    s = space.settings
    x = torch.randn(req["batch"], s.in_channels, s.input_size, s.input_size, device=req["device"])
    calls = []
    for arch in req["archs"]:
        child = space.child(arch)
        calls.append(onnx_call(child, x, req["threads"]) if req["backend"] == "onnxruntime" else torch_call(child, x))
    with torch.inference_mode():
        out = median_ms(calls, req["warmup"], req["repeats"], req.get("rounds", 1))
    json.dump(out, sys.stdout, allow_nan=False)


if __name__ == "__main__":
    main()
