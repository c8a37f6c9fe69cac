"""One rank's view of its tensor-parallel group: the collectives the sharded layers and the sparse methods
call, and the control channel rank 0 sends each step's inputs through.

With one rank every collective returns its input: the model code is the same with and without parallelism.
Tensors go over NCCL on CUDA and gloo on the CPU; control messages (pickled step inputs) always over gloo.
"""

import datetime
import os
from typing import Any, Optional

import torch
import torch.distributed as dist

# A collective waits this long for a peer before failing (a crashed peer is noticed sooner: see tp_worker).
TIMEOUT = datetime.timedelta(minutes=10)


class Communicator:
    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size
        self._control: Optional[Any] = None

    @classmethod
    def join(cls, rank: int, world_size: int, init_method: str, device: torch.device) -> "Communicator":
        """Join the group at `init_method` (every rank calls this with the same address)."""
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # ranks share one host: loopback
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=TIMEOUT, **kwargs)  # fmt: skip
        comm = cls(rank, world_size)
        comm._control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "nccl" else dist.group.WORLD
        return comm

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.parallel:
            dist.all_reduce(x)
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks, in place."""
        if self.parallel:
            dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `x` concatenated along the last dimension, in rank order."""
        if not self.parallel:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0's `message` on every rank (over the control channel)."""
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` on rank 0, in rank order (None elsewhere)."""
        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(value, out, dst=0, group=self._control)
        return out

    def min(self, value: int) -> int:
        """The smallest of every rank's `value` (e.g. the KV blocks each rank's memory holds)."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self._control)
        return int(t.item())

    def close(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Communicator()
