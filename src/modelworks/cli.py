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
    train = safety.add_parser("train", help="train them from the labelled datasets (rewrites the model files; "
                                             "needs PyTorch: pip install 'modelworks[train]')")
    train.add_argument("--data", default="../shared/datasets", help="folder of the labelled JSON Lines files")
    train.add_argument("--out", help="folder to write the model files to (default: the one the server loads)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--exclude", default="", help="comma-separated sources to leave out (a cross-source run: "
                                                      "then score the left-out source with eval --model)")
    train.add_argument("--limit", type=int, default=0, help="train on this many rows only (a smoke test)")
    train.add_argument("--calibrate-only", action="store_true", help="keep the trained stages in --out and fit "
                                                                     "their calibration again")
    train.add_argument("--windows", type=_at_least_one, default=1,
                       help="train MiniLM on each text's first N serving windows, a text's logit its highest "
                            "window's (default 1: the shipped model's, texts cut at 128 tokens; the card has 4's "
                            "figures)")
    evaluate = safety.add_parser("eval", help="the shipped classifiers on rows training never saw, against the "
                                              "targets (flagged AUPRC, jailbreaks, harmful requests, hate)")
    evaluate.add_argument("--data", default="../shared/datasets", help="folder of the labelled JSON Lines files")
    evaluate.add_argument("--model", help="folder of model files to score (default: the shipped ones)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--sample", type=int, default=0, help="only the first N rows of each source (quick)")
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


def _at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return number


def _safety(args) -> int:
    import json
    from pathlib import Path

    data = Path(args.data)
    if not data.is_dir():
        print(f"modelworks: no such folder: {data}", file=sys.stderr)
        return 2
    if args.action == "train":
        from modelworks.safety.train import train

        kwargs = {"out": Path(args.out)} if args.out else {}
        exclude = tuple(filter(None, args.exclude.split(",")))
        train(data, epochs=args.epochs, seed=args.seed, exclude=exclude, limit=args.limit,
              calibrate_only=args.calibrate_only, windows_per_text=args.windows, **kwargs)
        return 0
    from modelworks.safety.classifier import TextSafetyModel
    from modelworks.safety.evaluate import evaluate, format_report

    model = TextSafetyModel(Path(args.model)) if args.model else TextSafetyModel()
    report = evaluate(data, model, log=None if args.json else print, sample=args.sample)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
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
