"""GPU JPEG decoding is ordered against the training stream: nvJPEG writes its outputs from a
stream of its own without waiting for queued work, so the batch is decoded on a side stream that
no training kernel uses, and the caller's stream waits for it and is recorded as the images'
user. (The streams are stand-ins here: the order of the calls is what is checked.)"""

from contextlib import contextmanager

import torch
import torchvision.io

from dsnas import images
from dsnas.images import Box, Encoded


class _Stream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def synchronize(self):
        self.log.append(("synchronize", self.name))

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


class _Image:
    def __init__(self, log):
        self.log = log

    def record_stream(self, stream):
        self.log.append(("record", stream.name))


def test_gpu_decode_runs_on_a_side_stream_that_the_caller_waits_for(monkeypatch):
    log = []
    side, current = _Stream("side", log), _Stream("current", log)

    @contextmanager
    def on(stream):
        log.append(("enter", stream.name))
        yield
        log.append(("leave", stream.name))

    def decode_jpeg(data, mode, device):
        log.append(("decode", len(data), torch.device(device).type))
        return [_Image(log) for _ in data]

    monkeypatch.setattr(images, "_decode_stream", lambda device: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    jpeg = Encoded(torch.zeros(4, dtype=torch.uint8), Box(0, 0, 2, 2), False, "a.jpg")
    out = images._decode_jpegs([jpeg, jpeg], "RGB", torch.device("cuda"))
    assert len(out) == 2
    assert log == [("synchronize", "side"), ("enter", "side"), ("decode", 2, "cuda"), ("leave", "side"),
                   ("wait", "current", "side"), ("record", "current"), ("record", "current")]


def test_cpu_decode_is_unchanged(tmp_path):
    from PIL import Image

    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 6), (200, 30, 90)).save(path, "JPEG")
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    (got,) = images._decode_jpegs([Encoded(data, Box(0, 0, 6, 8), False, str(path))], "RGB", torch.device("cpu"))
    assert torch.equal(got, torchvision.io.decode_jpeg(data))
