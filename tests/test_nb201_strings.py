"""The nb201 space's architecture string against the benchmark's own reader: the nas-bench-201
package parses strings without its data file, so every string dsnas writes must mean to it the
same cell, and every string it writes must read back in dsnas as the same ops."""

import random

import pytest

nas_201_api = pytest.importorskip("nas_201_api")

from dsnas.spaces.nb201 import EDGES, OPS, from_string, to_string  # noqa: E402

BENCHMARK = nas_201_api.NASBench201API


def random_cells(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(OPS) for _ in EDGES] for _ in range(n)]


@pytest.mark.parametrize("ops", random_cells(100) + [[op] * len(EDGES) for op in OPS])
def test_a_string_dsnas_writes_is_the_same_cell_to_the_benchmark(ops):
    string = to_string(ops)
    nodes = BENCHMARK.str2lists(string)  # per node 1..3: ((op, source node), ...)
    edges = {(target, source): op for target, node in enumerate(nodes, start=1) for op, source in node}
    assert [edges[(target, source)] for target, source in EDGES] == ops
    matrix = BENCHMARK.str2matrix(string)  # matrix[target, source] = op index in the benchmark's op list
    assert [OPS[int(matrix[target, source])] for target, source in EDGES] == ops
    assert from_string(string) == ops


def test_the_benchmark_op_order_is_the_space_order():
    # str2matrix's default op list is the benchmark's; the space's candidates follow it, so an op
    # index means the same op in both
    ops = list(OPS)
    string = to_string(ops + ops[:1])
    matrix = BENCHMARK.str2matrix(string)
    assert [int(matrix[t, s]) for t, s in EDGES] == [*range(len(OPS)), 0]
