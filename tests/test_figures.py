"""The run's figures draw any space: blocks that offer different candidates (MobileNet's first
block has one) each show their own, and the legend names every candidate shown anywhere."""

from dsnas.report import plot_alpha


def test_alpha_figure_of_blocks_with_different_candidates(tmp_path):
    rows = [{"epoch": e, "stage": "search", "block": 0, "label": "one", "only": 1.0, "fixed": ""} for e in (0, 1)]
    rows += [{"epoch": e, "stage": "search", "block": 1, "label": "two", "a": 0.5 + e / 4, "b": 0.5 - e / 4,
              "fixed": "a" if e else ""} for e in (0, 1)]
    plot_alpha(tmp_path / "alpha.png", rows)
    assert (tmp_path / "alpha.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
