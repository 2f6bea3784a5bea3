"""A checkpoint refused for its pickle says why in one clean line: no torch warning before it, no
escape codes, no sentence cut mid-word."""

from __future__ import annotations

import pytest
import torch

from conftest import dsnas_error
from dsnas.checkpoint import FORMAT, load_checkpoint


class Opens:
    def __reduce__(self):
        return (open, ("/nonexistent/pwned", "w"))


@pytest.mark.parametrize("protocol, reason", [(2, "(Unsupported global: GLOBAL io.open was not an allowed global "
                                                   "by default)"), (4, "(Unsupported operand 149)")])
def test_a_refused_pickle_is_one_clean_line(tmp_path, recwarn, protocol, reason):
    torch.save({"format": FORMAT, "settings": {}, "x": Opens()}, tmp_path / "last.pt", pickle_protocol=protocol)
    msg = dsnas_error(load_checkpoint, tmp_path, {})
    assert msg.endswith(reason) and "\x1b" not in msg
    assert not recwarn.list


def test_a_torchscript_archive_is_refused_without_a_warning(tmp_path, recwarn):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "last.pt")
    recwarn.clear()  # TorchScript's own deprecation notes
    msg = dsnas_error(load_checkpoint, tmp_path, {})
    assert "Cannot use ``weights_only=True`` with TorchScript archives" in msg and len(msg) < 300
    assert not recwarn.list
