"""A baseline that would rank its candidates on no image (a tiny train_limit leaves a tenth of
nothing to hold out) is refused before training, instead of scoring every candidate 0%."""

from __future__ import annotations

from conftest import assert_one_line_error


def test_random_with_no_held_out_image_is_refused(tmp_path, dsnas_main):
    r = dsnas_main("search", "--method", "random", "--set", "train_limit=9", "--set", "batch_size=2",
                   "--set", "epochs=1", "--set", "search_epochs=1", "--set", "warmup_epochs=0",
                   "--set", "eval_bn_recalibrate=2", "--set", "candidates=2", "--out", tmp_path / "run")
    assert_one_line_error(r.returncode, r.stderr)
    assert "9 training images leave no image to hold out" in r.stderr and not (tmp_path / "run").exists()
