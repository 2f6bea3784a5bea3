"""Shared by the benchmark scripts: machine description and section updates in BENCHMARKS.md.

The scripts import the dsnas of the environment they run in: the checkout installed as the
README's Set up does, or `PYTHONPATH=src`."""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

import torch

from dsnas.latency import cpu_name

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery section below is written by the script it names; rerun the script to refresh it.\n"


def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} CPU cores ({cpu_name()}){gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s); Python {platform.python_version()}; {date.today().isoformat()}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    block = f"<!-- section:{name} -->\n{body.rstrip()}\n<!-- /section:{name} -->"
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
