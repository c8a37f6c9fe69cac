"""Tensor-parallel layers: each rank holds a slice of a projection and calls one collective where the slices
meet. Column-parallel projections (q/k/v, gate/up) split their outputs, row-parallel ones (o_proj, down_proj)
split their inputs and sum over ranks; the embedding and the LM head split the vocabulary.

Every layer records which slice of the checkpoint's tensor it holds (`shards`), so the loader reads only
that slice. With one rank (`SINGLE`) they are plain linear and embedding layers.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..runtime.distributed import Communicator
from .quant import METHODS, Unquantized


@dataclass(frozen=True)
class Shard:
    """Indices [start, start + length) along `dim` of a checkpoint tensor of size `full` there; a slice that
    runs past `full` (the last rank's vocabulary rows) is zero-padded."""

    dim: int
    start: int
    length: int
    full: int

    @property
    def stored(self) -> int:
        """How many of the slice's indices the checkpoint holds."""
        return max(0, min(self.length, self.full - self.start))


@dataclass(frozen=True)
class HeadPartition:
    """The attention heads one rank computes: query heads [q_start, q_start + heads) and KV heads
    [kv_start, kv_start + kv_heads). With fewer KV heads than ranks each KV head is replicated over
    world / num_kv_heads ranks (as vLLM does)."""

    heads: int
    kv_heads: int
    q_start: int
    kv_start: int

    @classmethod
    def of(cls, num_heads: int, num_kv_heads: int, comm: Communicator) -> "HeadPartition":
        world, rank = comm.world_size, comm.rank
        if num_heads % world:
            raise ConfigError(
                f"the model's {num_heads} attention heads do not divide by tensor_parallel_size {world}",
                "tensor_parallel_size",
            )
        if num_kv_heads % world and world % num_kv_heads:
            raise ConfigError(
                f"the model's {num_kv_heads} KV heads and tensor_parallel_size {world} must divide one another "
                "(each rank holds KV heads / tp of them, or one KV head replicated over tp / KV heads ranks)",
                "tensor_parallel_size",
            )
        heads = num_heads // world
        if num_kv_heads >= world:
            kv_heads = num_kv_heads // world
            return cls(heads, kv_heads, rank * heads, rank * kv_heads)
        return cls(heads, 1, rank * heads, rank // (world // num_kv_heads))


def split(total: int, comm: Communicator, what: str) -> tuple[int, int]:
    """This rank's (start, length) of `total` indices split evenly; the sizes must divide."""
    if total % comm.world_size:
        raise ConfigError(f"the model's {what} ({total}) does not divide by tensor_parallel_size {comm.world_size}",
                          "tensor_parallel_size")  # fmt: skip
    length = total // comm.world_size
    return comm.rank * length, length


class QuantLinear(nn.Linear):
    """A projection whose weights and product its linear method decides (quant.py); a quantized one also holds
    `weight_scale` [out_features, 1] (float32). The model builds it in the run's dtype; `set_dtypes` then gives
    the quantized weights their own dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, method: Unquantized) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.method = method
        self.weight_scale = (
            nn.Parameter(torch.ones(out_features, 1), requires_grad=False) if method.weight_dtype else None
        )

    def set_dtypes(self) -> None:
        if self.method.weight_dtype is not None:
            self.weight.data = self.weight.data.to(self.method.weight_dtype)
            self.weight_scale.data = self.weight_scale.data.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(x, self.weight, self.bias, self.weight_scale)


class ColumnParallelLinear(QuantLinear):
    """Output features [start, start + length) of a projection with `full` outputs."""

    def __init__(
        self, in_features: int, full: int, start: int, length: int, bias: bool, method: Unquantized = METHODS["none"]
    ) -> None:
        super().__init__(in_features, length, bias, method)
        shard = Shard(0, start, length, full)
        self.shards = {"weight": shard, "bias": shard, "weight_scale": shard}


class RowParallelLinear(QuantLinear):
    """Input features [start, start + length) of a projection; the partial outputs are summed over ranks
    (the bias, whole on every rank, is added once after the sum)."""

    def __init__(
        self,
        full: int,
        out_features: int,
        start: int,
        length: int,
        bias: bool,
        comm: Communicator,
        method: Unquantized = METHODS["none"],
    ) -> None:
        super().__init__(length, out_features, bias, method)
        self.comm = comm
        self.shards = {"weight": Shard(1, start, length, full)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.comm.parallel:
            return super().forward(x)
        out = self.method.apply(x, self.weight, None, self.weight_scale, self.comm.all_reduce_max)
        self.comm.all_reduce(out)
        return out if self.bias is None else out.add_(self.bias)


def vocab_shard(vocab_size: int, comm: Communicator) -> Shard:
    """Rows of the vocabulary this rank holds: ceil(vocab / tp) each, the last rank's padded."""
    length = -(-vocab_size // comm.world_size)
    return Shard(0, comm.rank * length, length, vocab_size)


class VocabParallelEmbedding(nn.Embedding):
    """Embedding rows of this rank's vocabulary slice; a token outside it contributes zeros before the sum."""

    def __init__(self, vocab_size: int, dim: int, comm: Communicator) -> None:
        shard = vocab_shard(vocab_size, comm)
        super().__init__(shard.length, dim)
        self.comm, self.shards = comm, {"weight": shard}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.comm.parallel:
            return F.embedding(ids, self.weight)
        start = self.shards["weight"].start
        local = ids - start
        inside = (local >= 0) & (local < self.num_embeddings)
        out = F.embedding(local.clamp(0, self.num_embeddings - 1), self.weight) * inside[:, None].to(self.weight.dtype)
        return self.comm.all_reduce(out)


class ParallelLMHead(nn.Linear):
    """Logits of this rank's vocabulary slice, gathered over ranks into the full vocabulary."""

    def __init__(self, dim: int, vocab_size: int, comm: Communicator) -> None:
        shard = vocab_shard(vocab_size, comm)
        super().__init__(dim, shard.length, bias=False)
        self.comm, self.shards, self.vocab_size = comm, {"weight": shard}, vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = METHODS["none"].apply(x, self.weight, None, None)  # unquantized (at decode, the GEMV)
        return self.comm.all_gather(logits)[:, : self.vocab_size] if self.comm.parallel else logits


def shards_of(model: nn.Module) -> dict[str, Shard]:
    """Checkpoint name -> the slice of it this rank's parameter holds, for every sharded parameter."""
    out: dict[str, Shard] = {}
    for prefix, module in model.named_modules():
        for param, shard in getattr(module, "shards", {}).items():
            if getattr(module, param, None) is not None:
                out[f"{prefix}.{param}" if prefix else param] = shard
    return out


def take(name: str, view: Any, shape: tuple[int, ...], shard: Shard) -> torch.Tensor:
    """A shard of checkpoint tensor `name`; `view` is the tensor or a lazy safetensors slice of shape `shape`."""
    if len(shape) <= shard.dim or shape[shard.dim] != shard.full:
        raise ConfigError(f"{name} has shape {tuple(shape)}, the config implies {shard.full} along dimension "
                          f"{shard.dim}", "model")  # fmt: skip
    idx = (slice(None),) * shard.dim + (slice(shard.start, shard.start + shard.stored),)
    return view[idx]
