"""How fast streamed JPEGs reach the model, and whether the model waits for them.

Builds a synthetic ImageNet-like ImageFolder (photo-like content, sizes around 500x375, real
JPEG encoding at quality 90) in a temporary folder, then measures images/s of:

  (a) the training crops alone: one worker (in this process) and N DataLoader workers, for both
      decoders (`jpeg_decode: workers`, PIL; `device`, workers read bytes and the batch is
      decoded on the device);
  (b) a full DSNAS search step (224 px, width 1.0, 1000 classes) fed by the loader, against
  (c) the same step on a batch already on the device; and the same for the child's training step.

From (b) it projects the published protocol (`configs/imagenet.yaml`: 240 epochs over 1.28 M
images) in device-hours. On a CPU the model is the bottleneck and the projection is only a
figure; on a GPU the (b)/(c) ratio says whether the input pipeline keeps up (target >= 0.9).

    python benchmarks/input_pipeline.py [--device cpu|cuda] [--images N] [--workers N] [--batch N]
                                        [--steps N] [--folder DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from statistics import median

import numpy as np
import torch

from _report import machine, write_section
from _steps import Pair, amp_name

from dsnas.config import load_config
from dsnas.data import Loader, load_data
from dsnas.runtime import autocast_dtype, stage_autocast

IMAGENET_IMAGES = 1_281_167
ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2)


def photo(seed: int) -> tuple[int, bytes]:
    """A JPEG of photo-like statistics: smooth gradients, a few hard-edged shapes, sensor grain."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    long_side = int(rng.normal(500, 60))
    w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    fields = [np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(2, 9) * y) for _ in range(3)]
    img = Image.fromarray((127 + 90 * np.stack(fields, -1)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return seed, out.getvalue()


def make_tree(root: Path, images: int, classes: int = 10) -> Path:
    """train/ and val/ class folders of synthetic JPEGs (val: a tenth, at least one per class)."""
    if (root / "train").is_dir():
        return root
    val = max(classes, images // 10)
    with Pool(os.cpu_count()) as pool:
        for seed, data in pool.imap_unordered(photo, range(images + val), chunksize=16):
            split = "train" if seed < images else "val"
            folder = root / split / f"c{seed % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{seed:07d}.jpg").write_bytes(data)
    return root


def crops_per_second(data, decode: str, workers: int, batch: int, device: torch.device, batches: int) -> float:
    """Images/s through the loader to uint8 on the device (JPEG decoding included), no model."""
    loader = Loader(data, "train", batch, 0, device, workers=workers, jpeg_decode=decode)
    it, n, t0 = iter(loader), 0, None
    for i in range(batches + 1):
        try:
            x, _ = next(it)
        except StopIteration:
            break
        if i == 0:  # the first batch pays for starting the workers
            _sync(device)
            t0 = time.perf_counter()
        else:
            n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def parity(data, device: torch.device, n: int = 64) -> dict:
    """The two decoders on the same images, crops and flips: max and mean |difference| of the
    uint8 crops, and of the decoded pixels before cropping (PIL against torchvision.io on
    ``device``: libjpeg-turbo on a CPU, nvJPEG on a GPU)."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    from dsnas.images import decode_batch

    out = {}
    for split in ("train", "test"):
        pil, dev = getattr(data, split), getattr(data, split).decoded_on("device")
        diffs = []
        for i in range(min(n, len(pil))):
            torch.manual_seed(i)
            a = pil[i][0]
            torch.manual_seed(i)
            b = decode_batch([dev[i][0]], pil.mode, pil.size, device)[0].cpu()
            diffs.append((a.int() - b.int()).abs())
        d = torch.stack(diffs).float()
        out[split] = {"max": int(d.max()), "mean": round(float(d.mean()), 4)}
    decoded = []
    for path, _ in data.train.samples[:n]:
        with Image.open(path) as im:
            a = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        b = decode_jpeg(torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8), device=device).cpu()
        decoded.append(int((a.int() - b.int()).abs().max()))
    out["decoded_max"] = max(decoded)
    return out


def stream_order(data, device: torch.device, rounds: int = 40, images: int = 8) -> dict:
    """How often a GPU decode overwrote memory that kernels queued before it still read, as
    torchvision PR #9606 tests it: fill tensors the size of the decoded images with a known
    value, queue a long kernel and then a sum of each, free them, decode, and check the sums.
    For the loader's decode (on its side stream) and for a plain `decode_jpeg` on the caller's
    stream; rounds out of ``rounds`` with a wrong sum."""
    from torchvision.io import decode_jpeg

    from dsnas.images import _decode_jpegs

    jpegs = [data.train.decoded_on("device")[i][0] for i in range(images)]
    sizes = [int(img.numel()) for img in _decode_jpegs(jpegs, "RGB", device)]
    decoders = {"loader (side stream)": lambda: _decode_jpegs(jpegs, "RGB", device),
                "decode_jpeg on the caller's stream": lambda: decode_jpeg([j.data for j in jpegs], device=device)}
    out = {}
    for name, decode in decoders.items():
        bad = 0
        for _ in range(rounds):
            blocks = [torch.full((n,), 3, dtype=torch.uint8, device=device) for n in sizes]
            torch.cuda.synchronize()
            torch.cuda._sleep(20_000_000)  # keeps the stream busy while the sums below wait their turn
            sums = [b.sum() for b in blocks]
            del blocks  # freed while their sums are still queued: the allocator may hand them to the decoder
            decode()
            torch.cuda.synchronize()
            bad += any(int(t) != 3 * n for t, n in zip(sums, sizes))
        out[name] = bad
    return out


def step_rates(pair: Pair, data, decode: str, workers: int, batch: int, steps: int, child: bool) -> tuple[float, float]:
    """Images/s of a training step fed by the loader, and of the same step on a resident batch."""
    step = pair.child_step if child else pair.search_step
    loader = Loader(data, "train", batch, 0, pair.device, workers=workers, jpeg_decode=decode)
    fed, it = [], iter(loader)
    for i in range(steps + 2):  # two warm-up steps, then timed ones: wait for data + step
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        pair.x, pair.y = x.contiguous(memory_format=torch.channels_last), y
        step()
        _sync(pair.device)
        if i >= 2:
            fed.append(time.perf_counter() - t0)
    resident = [pair.timed(step) for _ in range(steps)]
    return batch / median(fed), batch / median(resident)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def projection(rates: dict, cfg) -> float:
    """Hours of the preset's schedule at the measured fed rates (warm-up and search: supernet
    steps; finetune: child steps)."""
    supernet = cfg.search_epochs * IMAGENET_IMAGES / rates["search"]
    child = (cfg.epochs - cfg.search_epochs) * IMAGENET_IMAGES / rates["child"]
    return (supernet + child) / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=0, help="training images to generate (default 640 CPU, 8192 CUDA)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: every core)")
    p.add_argument("--batch", type=int, default=0, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--steps", type=int, default=0, help="timed training steps (default 8 CPU, 20 CUDA)")
    p.add_argument("--decoders", nargs="+", default=["workers", "device"], choices=["workers", "device"])
    p.add_argument("--folder", help="keep the synthetic tree here (reused when present)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    images = args.images or (8192 if cuda else 640)
    batch, steps = args.batch or (256 if cuda else 32), args.steps or (20 if cuda else 8)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = make_tree(Path(args.folder or tmp), images)
        made_s = time.perf_counter() - t0
        data = load_data(str(root), input_size=224)
        result = measure(args, data, device, batch, steps)
    result.update(images=images, batch=batch, steps=steps, workers=args.workers, made_s=round(made_s, 1))
    print(json.dumps(result, allow_nan=False))
    text = report(result)
    print(text)
    if not args.no_write:
        write_section(f"input_pipeline_{device.type}", text)


def measure(args, data, device: torch.device, batch: int, steps: int) -> dict:
    out = {"device": str(device), "crops": {}, "rates": {}, "parity": parity(data, device)}
    if device.type == "cuda":
        out["stream_order"] = stream_order(data, device)
        print(f"stream order: {out['stream_order']}", flush=True)
    for decode in args.decoders:
        for workers in sorted({0, args.workers}):
            rate = crops_per_second(data, decode, workers, batch, device, max(4, 2048 // batch if workers else 3))
            out["crops"][f"{decode}/{workers}"] = round(rate, 1)
            print(f"crops {decode}, {workers} workers: {rate:.1f} images/s", flush=True)
    amp = autocast_dtype("auto", device)
    for kind, dtype in (("search", stage_autocast("auto", amp, "search")), ("child", amp)):
        pair = Pair(224, batch, 1.0, 1000, 3, device=str(device), amp=dtype)
        for decode in args.decoders:
            fed, resident = step_rates(pair, data, decode, args.workers, batch, steps, kind == "child")
            out["rates"][f"{kind}/{decode}"] = {"fed": round(fed, 1), "resident": round(resident, 1),
                                                "ratio": round(fed / resident, 3), "amp": amp_name(dtype)}
            print(f"{kind} step, {decode}: fed {fed:.1f}, resident {resident:.1f} images/s", flush=True)
    cfg = load_config("imagenet", [])
    for decode in args.decoders:
        rates = {k: out["rates"][f"{k}/{decode}"]["fed"] for k in ("search", "child")}
        out[f"hours/{decode}"] = round(projection(rates, cfg), 1)
    return out


def report(r: dict) -> str:
    cuda = r["device"].startswith("cuda")
    lines = [f"## Input pipeline, {r['device']} (`benchmarks/input_pipeline.py`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/input_pipeline.py --device {r['device']} --images {r['images']} "
             f"--workers {r['workers']} --batch {r['batch']} --steps {r['steps']}`: {r['images']} synthetic JPEGs "
             f"(photo-like, long side ~500 px, quality 90; generated in {r['made_s']} s), 224 px crops.", "",
             "(a) Training crops alone, to uint8 on the device (decoding included, no model):", "",
             "| decoder | workers | images/s |", "|---|---|---|"]
    for key, rate in r["crops"].items():
        decode, workers = key.split("/")
        where = "main process" if workers == "0" else workers
        lines.append(f"| {decode} | {where} | {rate} |")
    q = r["parity"]
    lines += ["", f"The two decoders on the same 64 images with the same crops and flips: decoded pixels differ by at "
              f"most {q['decoded_max']} (PIL against torchvision.io on {r['device']}); the 224 px uint8 "
              f"crops by at most {q['train']['max']} levels, {q['train']['mean']} on average, for training crops, and "
              f"{q['test']['max']} / {q['test']['mean']} for evaluation crops (PIL's antialiased bilinear against "
              "torchvision's on tensors; the largest differences come from crops smaller than 224 px, which are "
              "enlarged)."]
    if "stream_order" in r:
        lines += ["", "GPU decoding against queued kernels (torchvision PR #9606's test, 40 rounds: tensors freed "
                  "while their sums are still queued behind a long kernel, then a batch of 8 decoded): rounds in "
                  "which a sum came out wrong, i.e. the decoder wrote into memory queued kernels still read: "
                  + "; ".join(f"{k}: {v}/40" for k, v in r["stream_order"].items()) + "."]
    lines += ["", f"(b) A training step fed by the loader ({r['workers']} workers) against (c) the same step on a "
              "batch already on the device (ShuffleNet space, width 1.0, 1000 classes, median of "
              f"{r['steps']} steps):", "",
              "| step | decoder | autocast | (b) fed, images/s | (c) resident, images/s | (b)/(c) |",
              "|---|---|---|---|---|---|"]
    for key, s in r["rates"].items():
        kind, decode = key.split("/")
        name = "DSNAS search step" if kind == "search" else "child training step"
        lines.append(f"| {name} | {decode} | {s['amp']} | {s['fed']} | {s['resident']} | "
                     f"{s['ratio']} |")
    hours = ", ".join(f"{r[k]} h with `jpeg_decode: {k.split('/')[1]}`" for k in r if k.startswith("hours/"))
    lines += ["", f"Projected cost of `configs/imagenet.yaml` (85 supernet epochs at the fed search-step rate, 155 "
              f"finetune epochs at the fed child-step rate, 1.28 M images each) on one such device: {hours}."]
    if not cuda:
        lines.append("On this CPU the model, not the input, sets the pace; the GPU figures come from "
                     "`bash benchmarks/cuda.sh`. Target there: (b)/(c) ≥ 0.9.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
