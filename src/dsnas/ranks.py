"""Which process is to blame when an exchange between the processes of a torchrun group fails.

Gloo and NCCL say only that a connection closed or a wait timed out. Each rank therefore keeps a
sign of life in the launcher's store: a count that a thread raises every second, beside the step
the loop has reached. A rank whose exchange failed records that, waits a few beats and reads the
others: a rank whose count stopped has ended or stopped answering (lost); one that is alive but
never reported a failed exchange was not waiting in one, so it stalled elsewhere. No clock is
compared, so the ranks may run on machines whose clocks differ.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .errors import RankLost

BEAT_S = 1.0        # how often a rank raises its count
JUDGED_AFTER = 3    # beats to wait before a count that did not move means the rank is lost
_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "processgroup", "broken pipe", "peer")


def is_exchange_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process did (not a bug here)."""
    name = type(error).__name__
    return name.startswith("Dist") or (isinstance(error, RuntimeError)
                                       and any(w in str(error).lower() for w in _FAILURE_WORDS))


class RankWatch:
    """A rank's sign of life (`start`, `stop`; ``where`` is the step the loop reached), and the
    one-line `RankLost` that names the lost or stalled rank when an exchange fails (`blame`)."""

    def __init__(self, store, rank: int, world: int, timeout_s: float):
        self.store, self.rank, self.world, self.timeout_s = store, rank, world, timeout_s
        self.where = "its start"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="dsnas-heartbeat", daemon=True)

    def start(self) -> "RankWatch":
        if self.store is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _beat(self) -> None:
        count = 0
        while not self._stopped.is_set():
            count += 1
            try:
                self.store.set(f"alive/{self.rank}", f"{count} {self.where}")
            except Exception:  # the launcher and its store are gone: nothing left to tell
                return
            self._stopped.wait(BEAT_S)

    def _read(self) -> dict[int, tuple[int, str]]:
        """(count, where) of every other rank that has beaten at least once."""
        found = {}
        for r in range(self.world):
            if r != self.rank and self.store.check([f"alive/{r}"]):
                count, _, where = self.store.get(f"alive/{r}").decode().partition(" ")
                found[r] = (int(count), where)
        return found

    def blame(self, error: BaseException, out) -> RankLost:
        """What the failed exchange ``error`` means, in one line: the rank that ended or stopped
        answering, else the one that stalled, and how the run continues."""
        try:
            self.store.set(f"failed/{self.rank}", self.where)
            before = self._read()
            time.sleep(JUDGED_AFTER * BEAT_S)
            after = self._read()
            failed = {r for r in range(self.world) if self.store.check([f"failed/{r}"])}
        except Exception:  # the store went too (the launcher ended): say what the exchange said
            return RankLost(f"the exchange between the {self.world} processes failed at {self.where} "
                            f"({str(error).splitlines()[0][:200]}); continue with: dsnas search --out {out} --resume")
        # a rank that recorded a failed exchange of its own left because of it: the others are to blame
        silent = [r for r in range(self.world) if r != self.rank and (r not in after or after[r][0] == before[r][0])]
        lost = [r for r in silent if r not in failed]
        stalled = [r for r in after if r not in silent and r not in failed]
        if lost:
            what = ", ".join(f"rank {r} of {self.world} (last at {after.get(r, (0, 'its start'))[1]})" for r in lost)
            said = f"{what} ended or stopped answering"
        elif stalled:
            what = ", ".join(f"rank {r} of {self.world} (at {after[r][1]})" for r in stalled)
            said = (f"{what} did not reach the exchange within dist_timeout_s ({self.timeout_s:g} s) and "
                    "stalled there")
        else:
            said = f"the exchange between the {self.world} processes failed ({str(error).splitlines()[0][:200]})"
        first_to_say = min(r for r in range(self.world) if r not in lost and r not in stalled)
        return RankLost(f"{said}; this rank stopped at {self.where}, and the last checkpoint in {out}/checkpoints "
                        f"is kept: continue with the run's command line and --out {out} --resume",
                        show=self.rank == first_to_say)


@contextlib.contextmanager
def watched(store, rank: int, world: int, timeout_s: float, out):
    """A `RankWatch` beating for the block's length; a failed exchange inside it becomes its `RankLost`."""
    watch = RankWatch(store, rank, world, timeout_s).start()
    try:
        yield watch
    except Exception as e:
        if world > 1 and store is not None and is_exchange_failure(e):
            raise watch.blame(e, out) from None
        raise
    finally:
        watch.stop()
