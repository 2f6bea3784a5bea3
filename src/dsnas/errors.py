"""The one error type users see: a clear one-line message and exit code 2."""

from __future__ import annotations

import reprlib


class DsnasError(Exception):
    """Bad input (file, config, data, arguments). The CLI prints it on one line and exits 2: its
    message is made one line here, whatever paths or values it quotes."""

    exit_code = 2

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


class Preempted(Exception):
    """A run that stopped on a preemption signal (SIGTERM, SIGUSR1) after checkpointing the step it
    had reached: the CLI prints the message (from rank 0) and exits 128 + the signal's number."""

    def __init__(self, message: str, signum: int, show: bool = True):
        super().__init__(one_line(message))
        self.exit_code, self.show = 128 + signum, show


class RankLost(Exception):
    """Under torchrun, an exchange between the processes failed because one of them ended or
    stalled (`ranks.RankWatch` names it): every step up to the last checkpoint is kept, and the
    CLI prints the message (from the lowest rank that saw it) and exits 3."""

    exit_code = 3

    def __init__(self, message: str, show: bool = True):
        super().__init__(one_line(message))
        self.show = show


def one_line(text: str) -> str:
    """``text`` with every unprintable character escaped as Python writes it (a newline as
    ``\\n``): a file name holding a newline must not split a message over two lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


QUOTE_LIMIT = 60  # characters of a quoted value in an error message

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 3, 3, 3, 3
_repr.maxstring = _repr.maxlong = _repr.maxother = 40


def quote(value) -> str:
    """``repr(value)`` cut to a few dozen characters: error messages quote what a file or an
    argument said, and that can be megabytes. `reprlib` shortens it without building it whole."""
    text = _repr.repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT - 3] + "..."
