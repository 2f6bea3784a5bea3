"""Small hostile files that would make a reader allocate gigabytes: each is read in a subprocess
whose address space is capped at 2 GiB above what its imports take, so a reader that inflates
too much fails here (MemoryError, a traceback) instead of swapping the machine."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import zlib

from conftest import cli_env

CAP_BYTES = 2 << 30

_PREAMBLE = """
import json, resource, sys
import dsnas.cli, dsnas.data, dsnas.config, dsnas.latency, dsnas.checkpoint, dsnas.arch
from dsnas.errors import DsnasError

def _vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + {cap}, resource.RLIM_INFINITY))
errors = []

def refused(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except DsnasError as e:
        errors.append(str(e))
        return
    errors.append(None)
"""


def run_capped(code: str, timeout: float = 60) -> list:
    """Run ``code`` under the memory cap; every ``refused(fn, ...)`` in it records the one-line
    message of the `DsnasError` that ``fn`` raised (None if it raised none). Returns the messages."""
    script = _PREAMBLE.format(cap=CAP_BYTES) + textwrap.dedent(code) + "\nprint(json.dumps(errors))\n"
    p = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    messages = json.loads(p.stdout.strip().splitlines()[-1])
    for m in messages:
        assert m is not None and "\n" not in m and len(m) < 400, m
    return messages


def alias_bomb(levels: int = 8, width: int = 10) -> str:
    """A few hundred bytes of YAML that expand to width**levels nodes through aliases."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bombs_are_refused_by_every_reader(tmp_path):
    bomb = alias_bomb()
    assert len(bomb) < 600
    (tmp_path / "config.yaml").write_text(bomb)
    (tmp_path / "arch.yaml").write_text("format: dsnas-arch/1\nchoices: " + bomb.replace("\n", "\n  ").replace(
        "l0:", "\n  l0:", 1))
    (tmp_path / "lut.yaml").write_text("format: dsnas-latency/1\nblocks:\n  " + bomb.replace("\n", "\n  "))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(bomb)
    messages = run_capped(f"""
        from pathlib import Path
        from dsnas.cli import _eval_data_spec
        from types import SimpleNamespace
        d = Path({str(tmp_path)!r})
        refused(dsnas.config.load_config, str(d / "config.yaml"))
        refused(dsnas.arch.load_arch, d / "arch.yaml")
        refused(dsnas.latency.load_latency, d / "lut.yaml")
        refused(dsnas.config.load_run_config, d / "run")
        refused(_eval_data_spec, SimpleNamespace(data=None, run=str(d / "run")))
        refused(dsnas.config.load_config, None, ["epochs=" + {bomb!r}])
    """)
    assert all("alias" in m for m in messages[:5]), messages
    assert "epochs must be int" in messages[5]


def deflate_repeated(prefix: bytes, unit: bytes, count: int) -> bytes:
    """A raw deflate stream of ``prefix + unit * count``, made in the time of one ``unit``: after
    a full flush the compressor starts afresh, so every compressed ``unit`` is the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    body = c.compress(unit) + c.flush(zlib.Z_FULL_FLUSH)
    return head + body * count + b"\x03\x00"  # an empty final block


def gzip_bomb(prefix: bytes, inflated: int) -> bytes:
    """A gzip file of ``prefix`` and then zeros, ``inflated`` bytes in all (its CRC left unset:
    a reader meets it only after inflating everything)."""
    unit = bytes(1 << 24)
    body = deflate_repeated(prefix, unit, max(1, (inflated - len(prefix)) // len(unit)))
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + bytes(8)


def idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


def _idx_folder(root, train_images: bytes, name: str = "train-images-idx3-ubyte.gz"):
    """An IDX folder whose ``name`` file is the hostile one; the others are small and valid."""
    root.mkdir()
    files = {"train-images-idx3-ubyte.gz": gzip.compress(idx_header(4, 8, 8) + bytes(256)),
             "train-labels-idx1-ubyte.gz": gzip.compress(idx_header(4) + bytes([0, 1, 0, 1])),
             "t10k-images-idx3-ubyte.gz": gzip.compress(idx_header(4, 8, 8) + bytes(256)),
             "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_header(4) + bytes([0, 1, 0, 1]))}
    files[name] = train_images
    for file, data in files.items():
        (root / file).write_bytes(data)
    return root


def test_idx_gzip_bombs_inflate_no_more_than_their_header_claims(tmp_path):
    """2.4 MB of gzip whose header claims 64 images but that inflates to 2.5 GB; one whose header
    claims 2**32 x 2**32 x 2**32 bytes; labels that claim 2**31 entries from a few kB."""
    bomb = _idx_folder(tmp_path / "bomb", gzip_bomb(idx_header(64, 28, 28), 5 << 29))
    assert bomb.joinpath("train-images-idx3-ubyte.gz").stat().st_size < 3_000_000
    claim = _idx_folder(tmp_path / "claim", gzip.compress(idx_header(2**32 - 1, 2**32 - 1, 2**32 - 1)))
    labels = _idx_folder(tmp_path / "labels", gzip_bomb(idx_header(2**31), 1 << 26),
                         "train-labels-idx1-ubyte.gz")
    messages = run_capped(f"""
        for name in ("bomb", "claim", "labels"):
            refused(dsnas.data.load_data, {str(tmp_path)!r} + "/" + name)
    """)
    assert "truncated or corrupt (header says [64, 28, 28], more than 50176 bytes" in messages[0]
    assert "compressed bytes, over 16x" in messages[1]
    assert "compressed bytes, over 16x" in messages[2]


def png(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A grayscale PNG of zeros (``height`` a multiple of 16), made without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then the pixels
    adler = 1
    for _ in range(height):
        adler = zlib.adler32(row, adler)
    idat = b"\x78\xda" + deflate_repeated(b"", row * 16, height // 16) + adler.to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _image_tree(root, big: bytes):
    """train/ and val/ of two classes of 8x8 grayscale PNGs, one of them ``big``."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8)).save(root / split / cls / "0.png")
    (root / "train" / "b" / "1.png").write_bytes(big)
    return root


def test_image_pixel_bombs_are_refused_before_decoding(tmp_path):
    """12000 x 12000 16-bit pixels in a 300 kB PNG (past the pixel limit): refused in memory and
    when streamed, before any pixel is decoded."""
    bomb = png(12000, 12000)
    assert len(bomb) < 400_000
    tree = _image_tree(tmp_path / "tree", bomb)
    (tmp_path / "big.png").write_bytes(bomb)
    messages = run_capped(f"""
        from dsnas.images import ImageFiles
        refused(dsnas.data.load_data, {str(tree)!r})
        refused(ImageFiles([({str(tmp_path / "big.png")!r}, 0)], 224, "L").__getitem__, 0)
    """)
    assert all("pixels" in m and "limit" in m and ("big.png" in m or "1.png" in m) for m in messages), messages


def test_16_bit_images_convert_without_float_copies(tmp_path):
    """The largest image allowed (8192 x 8192, 16-bit: 128 MiB of pixels) converts to 8 bits
    within 1 GiB; float64 copies of it would take 512 MiB each."""
    from dsnas.images import IMAGE_MAX_PIXELS

    side = int(IMAGE_MAX_PIXELS ** 0.5)
    (tmp_path / "big.png").write_bytes(png(side, side))
    script = _PREAMBLE.format(cap=1 << 30) + textwrap.dedent(f"""
        from dsnas.images import open_image
        im = open_image({str(tmp_path / "big.png")!r}, "L")
        print(im.mode, im.size)
    """)
    p = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["L", f"({side},", f"{side})"]


def test_pickle_lengths_are_checked_before_the_unpickler_allocates(tmp_path):
    """CIFAR batches whose BINBYTES8, BINUNICODE8 or FRAME claim 2**62 bytes in a few bytes."""
    import pickle
    import struct

    def batch(op: bytes) -> bytes:
        return b"\x80\x04" + op + struct.pack("<Q", 2**62) + b"abc."

    names = []
    for i, op in enumerate((b"\x8e", b"\x8d", b"\x95")):  # BINBYTES8, BINUNICODE8, FRAME
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        (folder / "data_batch_1").write_bytes(batch(op))
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": bytes(3072), b"labels": [0]}))
        names.append(str(folder))
    messages = run_capped(f"""
        for folder in {names!r}:
            refused(dsnas.data.load_data, folder)
    """)
    assert all("cannot be read as a CIFAR-10 batch" in m for m in messages), messages


def zip64(members: dict[str, bytes], bomb: str, inflated: int) -> bytes:
    """A zip archive of ``members`` (stored) in which ``bomb`` is instead a deflated stream of
    ``inflated`` zero bytes, its sizes in ZIP64 fields (its CRC left unset)."""
    import struct

    out, central = bytearray(), bytearray()
    for name, data in members.items():
        raw, method, size = data, 0, len(data)
        crc = zlib.crc32(data)
        if name == bomb:
            unit = bytes(1 << 24)
            raw, method, size, crc = deflate_repeated(b"", unit, inflated // len(unit)), 8, inflated, 0
        offset, key = len(out), name.encode()
        local_extra = struct.pack("<HHQQ", 1, 16, size, len(raw))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(key), len(local_extra)) + key + local_extra + raw
        extra = struct.pack("<HHQQQ", 1, 24, size, len(raw), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(key), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + key + extra
    start, n = len(out), len(members)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), start)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def test_a_checkpoint_member_that_inflates_to_gigabytes_is_refused_from_the_zip_directory(tmp_path):
    """A last.pt of a few MB whose tensor inflates to 3 GB: refused before torch reads it, and
    --resume falls back to prev.pt."""
    import io
    import zipfile

    import torch

    from dsnas.checkpoint import FORMAT

    settings = {"num_classes": 10}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "settings": settings, "model": {"w": torch.zeros(4)}}, buf)
    with zipfile.ZipFile(buf) as z:
        members = {m.filename: z.read(m) for m in z.infolist()}
    tensor = next(name for name in members if "/data/" in name)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.pt").write_bytes(zip64(members, tensor, 3 << 30))
    assert (folder / "last.pt").stat().st_size < 4_000_000
    with zipfile.ZipFile(folder / "last.pt") as z:  # a well-formed archive: only its sizes lie
        assert z.getinfo(tensor).file_size == 3 << 30
    messages = run_capped(f"""
        import torch
        from pathlib import Path
        from dsnas.checkpoint import checkpoint_limits, load_checkpoint
        limits = checkpoint_limits(torch.nn.Linear(4, 4))
        refused(load_checkpoint, Path({str(folder)!r}), {settings!r}, limits=limits)
    """)
    assert "inflates to 3221225472 bytes" in messages[0]
