"""rocket-serve MODEL --config FILE: an OpenAI-compatible server (trtllm-serve's flags)."""

import argparse
import logging

from ..errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocket-serve", description=__doc__)
    p.add_argument("model", help="Hugging Face checkpoint folder or .gguf file")
    p.add_argument("--config", "--extra_llm_api_options", dest="config", help="TensorRT-LLM-style YAML of LLM options")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's own)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", "--api_key", dest="api_key", help="require 'Authorization: Bearer KEY' on /v1/")
    p.add_argument(
        "--served-model-name", dest="served_model_name", help="model id clients send (default: the folder or file name)"
    )
    p.add_argument("--max-queue", "--max_queue", dest="max_queue", type=int,
                   help="answer 429 while this many requests wait for admission (default: no limit)")  # fmt: skip
    p.add_argument("--load_format", "--load-format", dest="load_format", choices=["auto", "dummy"],
                   help="dummy: random weights, for benchmarks of an architecture without its checkpoint")  # fmt: skip
    p.add_argument("--tp_size", "--tp-size", dest="tensor_parallel_size", type=int,
                   help="tensor-parallel ranks (GPUs); the server starts them itself")  # fmt: skip
    p.add_argument("--max_batch_size", type=int, help="most requests in flight (LlmArgs.max_batch_size)")
    p.add_argument("--max_seq_len", type=int, help="longest prompt + output (default: the model's)")
    p.add_argument("--max_num_tokens", type=int, help="a step's token budget (decode tokens and prompt chunks)")
    p.add_argument("--enable_chunked_prefill", "--enable-chunked-prefill", action="store_true", default=None,
                   help="prefill long prompts in chunks of what max_num_tokens leaves beside the decodes")  # fmt: skip
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from ..llmapi.llm import LLM
    from ..llmapi.llm_args import LlmArgs
    from .app import create_app

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    overrides = {
        k: getattr(args, k)
        for k in (
            "tokenizer",
            "max_batch_size",
            "max_seq_len",
            "max_num_tokens",
            "load_format",
            "tensor_parallel_size",
            "enable_chunked_prefill",
        )  # fmt: skip
        if getattr(args, k)
    }
    try:
        if args.config:
            llm_args = LlmArgs.from_yaml(args.config, model=args.model, **overrides)
        else:
            llm_args = LlmArgs(model=args.model, **overrides)
        llm = LLM(model=args.model, llm_args=llm_args)
    except ConfigError as e:
        raise SystemExit(f"rocket-serve: {e}") from None
    name = args.served_model_name or llm.engine.checkpoint.name
    try:
        uvicorn.run(
            create_app(llm, name, args.api_key, args.max_queue),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
        )
    finally:
        llm.shutdown()


if __name__ == "__main__":
    main()
