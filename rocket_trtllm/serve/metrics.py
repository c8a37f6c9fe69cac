"""Server counters, written in the Prometheus text format."""

import os
from dataclasses import dataclass, field
from typing import Any

import torch


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Metrics:
    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "abort": 0, "rejected": 0})
    prompt_tokens: int = 0
    generation_tokens: int = 0

    def render(self, snapshot: dict[str, Any]) -> str:
        rows = [
            ("rocket_requests_total", "counter", "Requests finished, by outcome", None),
            *[(f'rocket_requests_total{{outcome="{k}"}}', None, None, v) for k, v in self.requests.items()],
            ("rocket_prompt_tokens_total", "counter", "Prompt tokens processed", self.prompt_tokens),
            ("rocket_generation_tokens_total", "counter", "Tokens generated", self.generation_tokens),
            ("process_resident_memory_bytes", "gauge", "Resident memory of the server process", resident_bytes()),
            (
                "rocket_gpu_memory_allocated_bytes",
                "gauge",
                "GPU memory held by tensors (0 without CUDA)",
                torch.cuda.memory_allocated() if torch.cuda.is_available() else 0,
            ),
            ("rocket_step_seconds_total", "counter", "Engine step time, by kind (prefill: steps with a prompt)", None),
            ('rocket_step_seconds_total{kind="prefill"}', None, None, snapshot["prefill_step_seconds"]),
            ('rocket_step_seconds_total{kind="decode"}', None, None, snapshot["decode_step_seconds"]),
            ("rocket_steps_total", "counter", "Engine steps, by kind (prefill: steps with a prompt or a chunk)", None),
            ('rocket_steps_total{kind="prefill"}', None, None, snapshot["prefill_step_count"]),
            ('rocket_steps_total{kind="decode"}', None, None, snapshot["decode_step_count"]),
            (
                "rocket_prefix_cache_tokens_total",
                "counter",
                "Prompt tokens served by the prefix cache instead of computed",
                snapshot["cached_prompt_tokens"],
            ),
            (
                "rocket_prefix_cache_hit_rate",
                "gauge",
                "Prompt blocks found in the prefix cache / looked up",
                snapshot["prefixCacheHitRate"],
            ),  # fmt: skip
            ("rocket_requests_running", "gauge", "Requests in the running batch", snapshot["running"]),
            ("rocket_requests_waiting", "gauge", "Requests queued for admission", snapshot["waiting"]),
            ("rocket_batch_size_max", "gauge", "Largest batch run in one step", snapshot["peak_batch"]),
            ("rocket_kv_blocks_used", "gauge", "KV cache blocks in use", snapshot["kvBlocksUsed"]),
            ("rocket_kv_blocks_total", "gauge", "KV cache blocks in the pool", snapshot["kvBlocksTotal"]),
            ("rocket_kt_blocks_used", "gauge", "KT cache blocks in use", snapshot["ktBlocksUsed"]),
            (
                "rocket_tokens_evicted_total",
                "counter",
                "Prompt tokens evicted by stage 1",
                snapshot["promptTokensEvicted"],
            ),
            (
                "rocket_tokens_attended_per_step",
                "gauge",
                "Mean tokens attended per KV head per decode step",
                snapshot["meanTokensAttendedPerStep"],
            ),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            if kind:
                lines += [f"# HELP {name.split('{')[0]} {help_text}", f"# TYPE {name.split('{')[0]} {kind}"]
            if value is not None:
                lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
