"""``trtdsl serve ENGINE_DIR``: the CLI side of the server.

The main CLI registers it with ``add_serve_subcommand(subparsers)``; it can also run on its own:
``python -m trtdsl.server.cli ENGINE_DIR --port 8000``."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

__all__ = ["add_serve_subcommand", "serve_main", "main"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", help="engine directory built by `trtdsl build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--model-name", default=None, help="name in /v1/models (default: the directory name)")
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-num-tokens", type=int, default=None)
    p.add_argument("--kv-cache-max-tokens", type=int, default=None)
    p.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9)
    p.add_argument("--scheduler-policy", default="max_utilization",
                   choices=["max_utilization", "guaranteed_no_evict"])
    p.add_argument("--no-prefix-reuse", action="store_true", help="disable K/V prefix reuse")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="run decode steps eagerly instead of replaying CUDA graphs (CUDA only)")
    p.add_argument("--max-queue-size", type=int, default=1024,
                   help="requests waiting beyond this get 429")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of this process (the server owns its process)")
    p.add_argument("--log-level", default="info")


def add_serve_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the main CLI's subparsers; it dispatches to :func:`serve_main`."""
    p = subparsers.add_parser("serve", help="serve an engine over an OpenAI-compatible HTTP API",
                              description=__doc__)
    _add_arguments(p)
    p.set_defaults(func=serve_main)
    return p


def serve_main(args: argparse.Namespace) -> int:
    import torch
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        from ..errors import ConfigError
        raise ConfigError(f"`trtdsl serve` needs the serve extra ({exc.name} is missing): "
                          "pip install 'trtdsl[serve]'") from None

    from .runner import load_server
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_server(
        args.engine_dir, model_name=args.model_name, device=device, max_batch_size=args.max_batch_size,
        max_num_tokens=args.max_num_tokens, kv_cache_max_tokens=args.kv_cache_max_tokens,
        kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
        scheduler_policy=args.scheduler_policy, enable_prefix_reuse=not args.no_prefix_reuse,
        max_queue_size=args.max_queue_size, cuda_graphs=False if args.no_cuda_graphs else None,
        cuda_graph_capture="startup")
    try:
        uvicorn.run(loaded.app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        loaded.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtdsl serve", description=__doc__)
    _add_arguments(parser)
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
