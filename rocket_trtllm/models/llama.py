"""The Llama family in one file: Llama 3.x, Mistral, Qwen2 (qkv bias) and Qwen3 (q/k norm).

Module and parameter names follow the Hugging Face checkpoints so weights load by name. Under tensor
parallelism each rank builds the model with its communicator: its projections are the parallel layers'
slices, and everything downstream (KV pool, kernels, sparse methods) sees the rank's heads.
"""

from typing import Any, Optional, Union

import torch
from torch import nn

from ..kernels import layer_ops
from ..runtime.attention import AttentionBackend, AttentionMetadata
from ..runtime.distributed import SINGLE, Communicator
from ..runtime.kv_cache import ModelShape
from .parallel import (
    ColumnParallelLinear,
    HeadPartition,
    ParallelLMHead,
    QuantLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    split,
)
from .quant import METHODS, Unquantized
from .rope import RotaryEmbedding, rope_parameters

# A step with more tokens goes through each layer in slices of this many, attention itself aside: a long prompt's
# normed inputs, o_proj outputs and MLP activations never exist for all its tokens at once (at 128k tokens each
# [tokens, hidden] tensor is 1 GiB).
CHUNK_TOKENS = 8192


def fused_ops(x: torch.Tensor) -> bool:
    """The elementwise ops run as Triton kernels on CUDA and as their torch references elsewhere."""
    return x.is_cuda and layer_ops.triton is not None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = layer_ops.rms_norm if fused_ops(x) else layer_ops.rms_norm_ref
        return norm(x, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x += delta (the residual, in place), then this norm of it: one kernel on CUDA."""
        fused = layer_ops.add_rms_norm if fused_ops(x) else layer_ops.add_rms_norm_ref
        return fused(x, delta, self.weight, self.eps)


def fuse_linears(linears: list[QuantLinear]) -> tuple[nn.Parameter, Optional[nn.Parameter], Optional[nn.Parameter]]:
    """One weight (and bias, and per-channel scale) stacking the given projections' outputs: one GEMM."""

    def cat(tensors: list[Optional[torch.Tensor]]) -> Optional[nn.Parameter]:
        if any(t is None for t in tensors):
            return None
        return nn.Parameter(torch.cat([t.detach() for t in tensors]), requires_grad=False)

    return (
        cat([m.weight for m in linears]),
        cat([m.bias for m in linears]),
        cat([m.weight_scale for m in linears]),
    )


class Attention(nn.Module):
    def __init__(
        self, cfg: Any, layer: int, qkv_bias: bool, qk_norm: bool, comm: Communicator, method: Unquantized
    ) -> None:
        super().__init__()
        self.method = method
        part = HeadPartition.of(cfg.num_attention_heads, cfg.num_key_value_heads, comm)
        self.layer = layer
        self.num_heads, self.num_kv_heads = part.heads, part.kv_heads  # this rank's
        d = self.head_dim = head_dim_of(cfg)
        hidden, q_full, kv_full = cfg.hidden_size, cfg.num_attention_heads * d, cfg.num_key_value_heads * d
        self.q_proj = ColumnParallelLinear(hidden, q_full, part.q_start * d, part.heads * d, qkv_bias, method)
        self.k_proj = ColumnParallelLinear(hidden, kv_full, part.kv_start * d, part.kv_heads * d, qkv_bias, method)
        self.v_proj = ColumnParallelLinear(hidden, kv_full, part.kv_start * d, part.kv_heads * d, qkv_bias, method)
        o_bias = getattr(cfg, "o_bias", False)
        self.o_proj = RowParallelLinear(q_full, hidden, part.q_start * d, part.heads * d, o_bias, comm, method)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.qk_norm = qk_norm

    def fuse(self) -> None:
        """Replace q/k/v_proj (loaded by their checkpoint names) with one fused projection."""
        self.qkv_weight, self.qkv_bias, self.qkv_scale = fuse_linears([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    # x: normed hidden states [tokens, hidden] -> fused q/k/v projection [tokens, (heads + 2 * kv_heads) * head_dim]
    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(x, self.qkv_weight, self.qkv_bias, self.qkv_scale)

    # qkv: from `project`; cos, sin: [tokens, 1, head_dim] -> attention output [tokens, heads * head_dim]
    # (before o_proj, which the layer applies once it has dropped qkv)
    def forward(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        backend: AttentionBackend,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t, d = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q, k, v = q.view(t, self.num_heads, d), k.view(t, self.num_kv_heads, d), v.view(t, self.num_kv_heads, d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # RoPE is the backend's: at decode it rotates q and k inside its K/V write.
        return backend.forward(self.layer, q, k, v, meta, rope=(cos, sin)).reshape(t, -1)


class MLP(nn.Module):
    def __init__(self, cfg: Any, comm: Communicator, method: Unquantized) -> None:
        super().__init__()
        self.method = method
        full, hidden = cfg.intermediate_size, cfg.hidden_size
        start, n = split(full, comm, "intermediate_size")
        self.gate_proj = ColumnParallelLinear(hidden, full, start, n, False, method)
        self.up_proj = ColumnParallelLinear(hidden, full, start, n, False, method)
        self.down_proj = RowParallelLinear(full, hidden, start, n, False, comm, method)

    def fuse(self) -> None:
        """Replace gate/up_proj (loaded by their checkpoint names) with one fused projection."""
        self.gate_up_weight, _, self.gate_up_scale = fuse_linears([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        silu_mul = layer_ops.silu_mul if fused_ops(x) else layer_ops.silu_mul_ref
        return self.down_proj(silu_mul(self.method.apply(x, self.gate_up_weight, None, self.gate_up_scale)))


class DecoderLayer(nn.Module):
    def __init__(
        self, cfg: Any, layer: int, qkv_bias: bool, qk_norm: bool, comm: Communicator, method: Unquantized
    ) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer, qkv_bias, qk_norm, comm, method)
        self.mlp = MLP(cfg, comm, method)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, pending, cos, sin, backend, meta):  # noqa: ANN001, ANN201 (shapes as in Attention)
        # Decode and short prompts return the MLP's output as `pending`, which the next layer's input norm adds to the
        # residual stream in its own kernel. A step of more than CHUNK_TOKENS tokens goes through in slices but for
        # the attention itself, its residual adds in place.
        if x.shape[0] <= CHUNK_TOKENS:
            normed = self.input_layernorm(x) if pending is None else self.input_layernorm.add_and_norm(x, pending)
            out = self.self_attn(self.self_attn.project(normed), cos, sin, backend, meta)
            # the attention's residual add inside the norm's kernel too
            return x, self.mlp(self.post_attention_layernorm.add_and_norm(x, self.self_attn.o_proj(out)))
        out = self.self_attn(self._project_in_slices(x), cos, sin, backend, meta)  # written over its queries
        for part, attended in zip(x.split(CHUNK_TOKENS), out.split(CHUNK_TOKENS)):
            part += self.self_attn.o_proj(attended)
        del out
        for part in x.split(CHUNK_TOKENS):
            part += self.mlp(self.post_attention_layernorm(part))
        return x, None

    def _project_in_slices(self, x: torch.Tensor) -> torch.Tensor:
        # The fused q/k/v projection of every token, each slice's normed input made only for its own projection (a
        # whole normed input is 1 GiB of a 128k prompt's peak). Attention itself takes the whole prompt: SDPA's
        # Hopper kernel (cuDNN) runs only square causal masks, and a prompt's chunks after its first would need the
        # bottom-right one, 1.9x the time (docs/log/benchmarks.md).
        attn = self.self_attn
        qkv = x.new_empty(x.shape[0], attn.qkv_weight.shape[0])
        for part, rows in zip(qkv.split(CHUNK_TOKENS), x.split(CHUNK_TOKENS)):
            part.copy_(attn.project(self.input_layernorm(rows)))
        return qkv


class Backbone(nn.Module):
    def __init__(self, cfg: Any, qkv_bias: bool, qk_norm: bool, comm: Communicator, method: Unquantized) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, comm)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, qkv_bias, qk_norm, comm, method) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """Decoder-only LM over packed tokens; attention goes through the given backend."""

    qkv_bias = False
    qk_norm = False

    def __init__(self, cfg: Any, comm: Communicator = SINGLE, method: Unquantized = METHODS["none"]) -> None:
        super().__init__()
        self.config = cfg
        bias = self.qkv_bias or getattr(cfg, "attention_bias", False)
        self.model = Backbone(cfg, bias, self.qk_norm, comm, method)
        self.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, comm)
        self.rotary = RotaryEmbedding(rope_parameters(cfg), head_dim_of(cfg))
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))

    def fuse_projections(self) -> None:
        """After loading: q/k/v and gate/up each become one GEMM (a third of decode's GEMM launches)."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    @property
    def shape(self) -> ModelShape:
        """The attention shape this rank computes (its heads under tensor parallelism)."""
        attn = self.model.layers[0].self_attn
        return ModelShape(self.config.num_hidden_layers, attn.num_heads, attn.num_kv_heads, attn.head_dim)

    # input_ids, positions: [tokens]; logit_idx: [n] -> logits [n, vocab] (float32); with hidden_idx [m], also the
    # final normed hidden states of those tokens [m, hidden] (prompt logprobs: `lm_head` of them, a slice at a time)
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        logit_idx: torch.Tensor,
        backend: AttentionBackend,
        meta: AttentionMetadata,
        hidden_idx: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        pending = None  # the last MLP output not yet added to the residual stream

        def final(idx: torch.Tensor) -> torch.Tensor:
            rows = x[idx]
            return self.model.norm(rows) if pending is None else self.model.norm.add_and_norm(rows, pending[idx])

        for layer in self.model.layers:
            x, pending = layer(x, pending, cos, sin, backend, meta)
        logits = self.lm_head(final(logit_idx)).float()
        return logits if hidden_idx is None else (logits, final(hidden_idx))


class LlamaForCausalLM(CausalLM):
    pass


class MistralForCausalLM(CausalLM):
    pass


class Qwen2ForCausalLM(CausalLM):
    qkv_bias = True


class Qwen3ForCausalLM(CausalLM):
    qk_norm = True


ARCHITECTURES: dict[str, type[CausalLM]] = {
    cls.__name__: cls for cls in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)
}


def head_dim_of(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
