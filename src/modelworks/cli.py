"""Command line: `modelworks serve [--config FILE]`, `modelworks fetch-models [--config FILE]`."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from modelworks.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelworks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", default=os.environ.get("MODELWORKS_CONFIG"), help="YAML or TOML config file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    fetch = sub.add_parser("fetch-models", help="assemble and verify the embedded models' files, then exit")
    fetch.add_argument("--config", default=os.environ.get("MODELWORKS_CONFIG"))
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", default=os.environ.get("MODELWORKS_CONFIG"))
    db = sub.add_parser("db", help="the control-plane database")
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply the migrations")
    db.add_argument("--config", default=os.environ.get("MODELWORKS_CONFIG"))
    db.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                    help="wait up to this long for the database to accept connections (a migration job or service "
                         "started beside it)")
    safety = sub.add_parser("safety", help="the built-in safety classifiers").add_subparsers(dest="action",
                                                                                             required=True)
    train = safety.add_parser("train", help="train them from the labelled datasets (rewrites the model file)")
    train.add_argument("--data", default="../shared/datasets", help="folder of the labelled JSON Lines files")
    train.add_argument("--out", help="model file to write (default: the one the server loads)")
    evaluate = safety.add_parser("eval", help="precision, recall, F1 and AUPRC on a labelled JSON Lines file")
    evaluate.add_argument("file")
    evaluate.add_argument("--all-rows", action="store_true", help="not only the held-out fifth")
    from modelworks import cli_admin

    cli_admin.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in cli_admin.ADMIN_COMMANDS:
        return cli_admin.run(args)
    if args.command == "safety":
        return _safety(args)

    from modelworks.settings import load_settings

    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "fetch-models":
            return _fetch(settings)
        if args.command == "db":
            return _db(settings, args.wait)
        print("configuration is valid")
        return 0
    except ConfigError as exc:
        print(f"modelworks: {exc}", file=sys.stderr)
        return 2


def _safety(args) -> int:
    from pathlib import Path

    if args.action == "train":
        from modelworks.safety.train import train

        kwargs = {"out": Path(args.out)} if args.out else {}
        train(Path(args.data), **kwargs)
        return 0
    from modelworks.safety.evaluate import evaluate, format_report

    path = Path(args.file)
    if not path.exists():
        print(f"modelworks: no such file: {path}", file=sys.stderr)
        return 2
    print(format_report(evaluate(path, holdout_only=not args.all_rows)))
    return 0


def _serve(settings, args) -> int:
    import uvicorn

    from modelworks.api.app import create_app
    from modelworks.api.drain import draining_server
    from modelworks.api.server import uvicorn_options

    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    _blas_threads(settings)
    logging.basicConfig(level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    new_key = app.control.prepare()
    host, port = settings.server.host, settings.server.port
    shown = f"[{host}]" if ":" in host else host
    print(f"Modelworks base URL: http://{shown}:{port}/v1  (Azure endpoint: http://{shown}:{port})", flush=True)
    if new_key:
        print(f"API key (admin; shown once, stored only as a hash): {new_key}", flush=True)
    elif settings.api_key:
        print("API key: MODELWORKS_API_KEY (an admin key)", flush=True)
    else:
        print("API key: the admin key printed at first start (or create one: modelworks keys create)", flush=True)
    print("Deployments: " + ", ".join(settings.deployments), flush=True)
    _open_files_limit(settings.server.max_connections + 512)  # the connections, plus files, DB and upstreams
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", lifespan="on",
                            proxy_headers=False, server_header=False,
                            access_log=settings.server.access_log, log_level=settings.server.log_level,
                            timeout_graceful_shutdown=5, **uvicorn_options(settings.server))
    app.started.append(_tune_gc)
    server = draining_server(config, app.drain)
    server.run()
    return 0 if server.started else 1


def _tune_gc() -> None:
    """Once the server has started, what start-up made (modules, schemas, settings: some 150,000 objects) is
    moved out of the garbage collector's sight (`gc.freeze`), so that its full passes walk only what serving
    makes; and the youngest generation is collected every 10,000 net allocations instead of 700, so that the
    objects of requests in flight are not walked (and promoted, to be walked again) several times a request.
    Measured under load (the Responses benchmark): a full pass took 60-150 ms with start-up's objects in it,
    about 1 ms without, and they came every second or so; the threshold took Responses at 1 connection from
    0.74 to 0.83 of chat completions' requests/s (medians of 5 interleaved rounds)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _open_files_limit(needed: int) -> None:
    """Raise the soft limit on open files towards `needed` (as far as the hard limit allows): a common soft
    limit of 1024 would stop accepting connections before `server.max_connections` does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logging.getLogger("modelworks").warning(
            "open files are limited to %d (hard limit): fewer than server.max_connections + 512 (%d)", target, needed)


def _blas_threads(settings) -> None:
    """BLAS reads its thread count once, when NumPy loads: set it first, from the embeddings backends that run on
    NumPy, else 1 (vector-store searches are small products that a second thread only slows down; the encoders on
    ONNX Runtime have threads of their own)."""
    from modelworks.settings import EmbeddedEmbeddingsBackend

    threads = [b.threads for b in settings.backends.values()
               if isinstance(b, EmbeddedEmbeddingsBackend) and b.runtime == "numpy"]
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(max(threads, default=1)))


def _db(settings, wait_s: float = 0) -> int:
    from sqlalchemy.exc import OperationalError

    from modelworks.store.db import Database

    logging.basicConfig(level="INFO", format="%(message)s")
    db = Database.from_settings(settings)
    try:
        db.upgrade(wait_s)
    except OperationalError as exc:
        print(f"modelworks: the database cannot be reached: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"database is at the newest migration ({db.url.split('@')[-1]})")
    return 0


def _fetch(settings) -> int:
    from modelworks.model_files import resolve_model_source
    from modelworks.settings import EmbeddedEmbeddingsBackend, LlamaCppBackend

    for name, spec in settings.backends.items():
        if isinstance(spec, (LlamaCppBackend, EmbeddedEmbeddingsBackend)):
            path = resolve_model_source(spec.model, settings.model_cache_path)
            print(f"{name}: {path}")
    return 0
