"""Where and how a run computes: the torchrun process group, the device, the autocast precision
of each stage, and the check that every rank holds the same architecture state."""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DsnasError, quote


# fp32 on CUDA means IEEE fp32. cuDNN runs fp32 convolutions in TF32 by default (a 10-bit mantissa,
# as fp16's), yet the search stage runs in fp32 because bf16 makes the gate rewards too noisy
# (`stage_autocast`); whether TF32 keeps them precise enough is for the GPU figures of
# benchmarks/reward_precision.py to decide. Until then both TF32 switches are set off.
TF32 = False


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    tf32: bool = False  # fp32 convolutions and matmuls run in TF32
    store: object | None = None  # the launcher's key-value store, this attempt's keys (more than one process)
    timeout_s: float = 1800.0    # how long an exchange between the processes may wait

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_env(env=os.environ) -> tuple[int, int, int]:
    """(world size, rank, local rank) from the variables torchrun sets, checked as torchrun sets
    them: whole numbers, 0 <= RANK < WORLD_SIZE, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE,
    and MASTER_ADDR and MASTER_PORT for more than one process. Unset, they describe one process."""
    def whole(name: str, default: str) -> int:
        text = env.get(name, default).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 9):
            raise DsnasError(f"environment variable {name} must be a whole number, got {quote(env[name])}")
        return int(text)

    world, rank, local_rank = whole("WORLD_SIZE", "1"), whole("RANK", "0"), whole("LOCAL_RANK", "0")
    local_world = whole("LOCAL_WORLD_SIZE", str(world))
    if world < 1 or rank >= world:
        raise DsnasError(f"environment variables RANK={rank} and WORLD_SIZE={world} name no process: RANK must "
                         "be below WORLD_SIZE (launch with torchrun, or unset both)")
    if not local_rank < local_world <= world:
        raise DsnasError(f"environment variables LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world} and "
                         f"WORLD_SIZE={world} do not fit together (launch with torchrun)")
    if world > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise DsnasError(f"WORLD_SIZE={world} needs the environment variable {name} (launch with torchrun)")
        port = env["MASTER_PORT"].strip()
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise DsnasError(f"environment variable MASTER_PORT must be a port number, got {quote(env['MASTER_PORT'])}")
    return world, rank, local_rank


def setup_runtime(device: str = "auto", amp: str = "auto", deterministic: bool = False,
                  timeout_s: float = 1800.0) -> Runtime:
    """Join the torchrun process group when launched by torchrun; pick the device (``auto``,
    ``cpu``, ``cuda`` or ``cuda:N``) and the autocast precision (a config's ``amp``). An exchange
    between the processes that waits longer than ``timeout_s`` fails (`ranks.RankWatch` says why)."""
    world, rank, local_rank = launch_env()
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise DsnasError(f"device {device!r} requested but CUDA is not available")
    if deterministic:
        use_deterministic_algorithms()
    if want_cuda:
        device = torch.device(device if ":" in device else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    store = None
    if world > 1 and not dist.is_initialized():
        store = _attempt_store(rank, world)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return Runtime(rank, world, device, autocast_dtype(amp, device), set_tf32(device), store, timeout_s)


def _attempt_store(rank: int, world: int):
    """torchrun's store, with its keys under this attempt of the group: a group that torchrun
    restarts (--max-restarts) may meet in the same store, where the dead group's addresses would
    still be found."""
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world))
    return dist.PrefixStore(f"dsnas/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def use_deterministic_algorithms() -> None:
    """Deterministic algorithms only, so that a CUDA run repeats bitwise as a CPU run does: cuDNN
    picks deterministic convolution algorithms and does not benchmark, torch refuses an op that
    has no deterministic version, and cuBLAS gets the fixed workspace this needs (before its first
    call). Process-wide, as these switches are."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def set_tf32(device: torch.device) -> bool:
    """Set both TF32 switches (cuDNN's and cuBLAS's) to `TF32` for a CUDA device; returns whether
    fp32 math there runs in TF32 (never on a CPU)."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = TF32
    return TF32


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on a GPU that supports it and off elsewhere; ``bf16``
    and ``fp16`` are honoured on any device (fp16 trains with a gradient scaler)."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_ok else None
    if amp == "bf16" and not bf16_ok:
        raise DsnasError(f"config: amp bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or off")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def precision_label(amp: str, dtype: torch.dtype | None, stages: tuple, tf32: bool = False) -> str:
    """How a run through ``stages`` (`methods.Stage`) computes, for the log and metrics.json:
    ``fp32``, ``bf16``, ``fp16 (scaled)``, or ``bf16, search stage fp32`` under ``amp: auto``;
    ``tf32`` in place of fp32 when that runs in TF32."""
    full = "tf32" if tf32 else "fp32"
    name = {torch.bfloat16: "bf16", torch.float16: "fp16 (scaled)"}.get(dtype, full)
    for stage in stages:
        if dtype is not None and stage_autocast(amp, dtype, stage.full_precision) is None:
            name += f", {stage.name} stage {full}"
    return name


def stage_autocast(amp: str, dtype: torch.dtype | None, full_precision: bool) -> torch.dtype | None:
    """The autocast dtype of a training step. Under ``amp: auto`` the search stage runs in fp32:
    a gate's reward <dL/dy, y> is a small difference of large sums (cancellation of 1e2-1e4 on
    ShuffleNet blocks), and with bf16 activations its error is as large as its spread over
    batches and paths (benchmarks/reward_precision.py). An explicit ``bf16``/``fp16`` is kept."""
    return None if amp == "auto" and full_precision else dtype


def check_consistent(alphas: list[torch.Tensor], fixed: list[int | None], epoch: int) -> None:
    """All ranks must hold bitwise the same alpha and fixed set (a search's ``alphas`` and
    ``fixed()``); abort with a clear error if not."""
    alpha = torch.cat([a.detach().flatten().float() for a in alphas])
    fixed = torch.tensor([-1 if f is None else f for f in fixed], dtype=torch.float32, device=alpha.device)
    mine = torch.cat([alpha, fixed])
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    bad = [r for r, t in enumerate(gathered) if not torch.equal(t, gathered[0])]
    if bad:
        raise DsnasError(f"ranks {bad} hold a different alpha or fixed set than rank 0 after epoch {epoch + 1}; "
                         "the architecture state diverged, stopping")


def set_threads(wanted: int, rt: Runtime) -> int:
    """Use ``wanted`` intra-op threads (0: OMP_NUM_THREADS or torch's default, as rank 0 sees them)
    in every process, and return the count: one count for all ranks whatever each node's launcher
    set, which the run records so that a resume sums in the same order."""
    count = wanted or torch.get_num_threads()
    if rt.world > 1 and not wanted:  # rank 0's environment decides for every rank
        t = torch.tensor([count if rt.rank == 0 else 0], dtype=torch.int64, device=rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        count = int(t)
    torch.set_num_threads(count)
    return count


def largest_over_ranks(value: int, rt: Runtime) -> int:
    """The largest of every rank's ``value`` (a signal one rank received, for all to act on)."""
    if rt.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def check_same_on_every_rank(value: int, rt: Runtime, what: str) -> None:
    """Stop, in one line, unless every rank holds the same ``value`` (a decision each took alone)."""
    if rt.world == 1:
        return
    t = torch.tensor([value, -value], dtype=torch.int64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise DsnasError(f"the {rt.world} processes disagree on {what}: the run folder changed while they started")


def wrap_ddp(model: torch.nn.Module, rt: Runtime, find_unused: bool) -> torch.nn.Module:
    """``model`` under DistributedDataParallel. Buffers are not broadcast: each rank keeps its own
    BN statistics until they are averaged at the epoch's end (`evaluate.sync_bn_stats`).

    torch 2.13 deprecates ``broadcast_buffers`` for ``forward_sync_buffers``, but the new flag
    still copies rank 0's buffers into every rank when the wrapper is built, which would
    overwrite the per-rank statistics a resumed run restores; only ``broadcast_buffers=False``
    skips that copy (and torch 2.11 has no other flag), so it stays, without its warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`broadcast_buffers` is deprecated", FutureWarning)
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=find_unused, broadcast_buffers=False)


def mean_over_ranks(value: float, rt: Runtime) -> float:
    """``value`` averaged over the ranks (itself in a single process)."""
    if rt.world == 1:
        return value
    t = torch.tensor([value], device=rt.device)
    dist.all_reduce(t)
    return float(t) / rt.world
