"""Serve a model over OpenAI's API, with a chat page at / (python -m colossal_hammer.serve --model DIR).

    python -m colossal_hammer.serve --model hf_model --port 8000     # then open http://127.0.0.1:8000/

--model takes an HF folder, an export, or a checkpoint's step-N folder; --adapter a LoRA adapter
(PEFT, safetensors) merged into it. Binds 127.0.0.1 unless --host says otherwise; with --api_key (or
COLOSSAL_HAMMER_API_KEY) every /v1 request needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError, check_device, check_positive, run_cli

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ServeConfig:
    model: str
    adapter: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    served_model_name: Optional[str] = None
    max_batch_size: int = 16
    max_request_bytes: int = 1 << 20
    device: str = "cpu"
    dtype: str = "auto"

    def __post_init__(self):
        if not self.served_model_name:
            self.served_model_name = os.path.basename(os.path.normpath(self.model))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m colossal_hammer.serve", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="HF model folder, export, or checkpoint step-N folder")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (PEFT, adapter_model.safetensors) to merge")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=8000, help="Port to listen on")
    p.add_argument("--api_key", default=os.environ.get("COLOSSAL_HAMMER_API_KEY"),
                   help="Require 'Authorization: Bearer KEY' on /v1 (default: $COLOSSAL_HAMMER_API_KEY, else none)")
    p.add_argument("--served_model_name", default=None, help="The model's id in the API (default: the folder name)")
    p.add_argument("--max_batch_size", type=int, default=16, help="Requests decoded together; more wait in line")
    p.add_argument("--max_request_bytes", type=int, default=1 << 20, help="Larger request bodies get 413")
    p.add_argument("--device", default=None, help="Default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: the dtype the weights were saved in")
    return p


def config_from_args(args) -> ServeConfig:
    check_positive(args.max_batch_size, "--max_batch_size")
    check_positive(args.max_request_bytes, "--max_request_bytes")
    if args.api_key is not None and not args.api_key.strip():
        # a variable set to nothing would otherwise make every request a 401, with nothing said here
        raise InputError("--api_key (or $COLOSSAL_HAMMER_API_KEY) is empty: every request would be refused; "
                         "give a key, or unset the variable to serve without one")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: must be in 0..65535")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(args.device)
    return ServeConfig(model=args.model, adapter=args.adapter, host=args.host, port=args.port, api_key=args.api_key,
                       served_model_name=args.served_model_name, max_batch_size=args.max_batch_size,
                       max_request_bytes=args.max_request_bytes, device=args.device, dtype=args.dtype)


def make_app(config: ServeConfig):
    """Load the model, start the engine, and build the app (the engine stops with the app)."""
    from . import loading
    from .app import Served, build_app
    from .engine import Engine
    from .prompts import template_name

    model, tokenizer = loading.load(config.model, config.adapter, config.device, config.dtype)
    engine = Engine(model, tokenizer, loading.eos_ids(model, tokenizer), config.max_batch_size).start()
    app = build_app(Served(engine, tokenizer, config.served_model_name, loading.context_length(model),
                           config.api_key, config.max_request_bytes))
    print(f"serve: {config.served_model_name} from {config.model}; chat: {template_name(tokenizer)}; "
          f"context {loading.context_length(model)} tokens", file=sys.stderr, flush=True)
    return app


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)

    def body():
        config = config_from_args(args)
        app = make_app(config)
        import uvicorn

        print(f"serve: open http://{config.host}:{config.port}/ (API at /v1)", file=sys.stderr, flush=True)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")

    run_cli(body)


if __name__ == "__main__":
    main()
