"""Rank sharding under ``torchrun``: which grid points this process computes, and the few collectives.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; `init` starts the
process group (gloo on CPU, nccl on GPU) when there is more than one rank, and every other function
works the same in a plain single process (rank 0 of 1). Work is split in whole *units* (blocks of grid
points, each one chunk of the result store), unit u going to rank ``u % world``, so ranks write
disjoint chunks and a run's numbers do not depend on how many ranks computed them.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """The indices in ``range(n)`` that this rank owns: ``rank, rank + world, ...``."""
        return list(range(self.rank, n, self.world))


def context() -> Context:
    """Rank, world size and local rank from the ``torchrun`` environment (0, 1, 0 without it)."""
    return Context(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device | str | None = None) -> Context:
    """Start the process group when launched by torchrun with several ranks; return the context.

    On CUDA each rank uses ``cuda:LOCAL_RANK`` and nccl; on CPU gloo. Idempotent.
    """
    ctx = context()
    if ctx.world > 1 and dist.is_available() and not dist.is_initialized():
        dev = torch.device(device) if device is not None else torch.device("cpu")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)
    return ctx


def rank_device(device: torch.device | str) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; other devices are returned as given."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and context().world > 1:
        return torch.device("cuda", context().local_rank)
    return dev


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (itself in a single process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op in a single process); returns ``t``."""
    if active():
        dist.all_reduce(t)
    return t


def all_reduce_grads(params) -> None:
    """Sum the gradients of ``params`` over ranks (each rank's loss is already scaled by its share)."""
    if active():
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)


def combine_units(out):
    """Combine in-memory results of all ranks: each rank filled its own rows of ``out`` (a float64 numpy
    array) and left NaN elsewhere; every rank gets the full array."""
    import numpy as np

    if not active():
        return out
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.from_numpy(np.nan_to_num(out, nan=0.0)).to(dev)
    mask = torch.from_numpy((~np.isnan(out)).astype(np.float64)).to(dev)
    dist.all_reduce(t)
    dist.all_reduce(mask)
    res = t.cpu().numpy()
    res[mask.cpu().numpy() == 0] = np.nan
    return res


def shutdown() -> None:
    """Leave the process group: every rank waits for the others first, then destroys it.

    Destroying while a peer is still talking makes gloo abort the peer ("terminate called without an
    active exception", SIGABRT), so the barrier matters. `init` registers this to run at exit.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def finish(code: int = 0) -> None:
    """End a multi-rank process: leave the group, flush, and exit with ``code`` at once.

    torch 2.13's gloo can abort a rank during interpreter teardown after a clean
    ``destroy_process_group`` ("terminate called without an active exception"; about 1 run in 10
    here), which turns a finished run into a failed one. Exiting with ``os._exit`` right after the
    group is gone skips that teardown. A no-op in a single process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
