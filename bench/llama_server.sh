#!/usr/bin/env bash
# Build llama.cpp's own server, `llama-server`, from the sources the llama-cpp-python sdist vendors
# (the same llama.cpp that bench/engine.sh measures through the Python binding), for
# bench/serve.py. About 20 minutes on 2 cores. Prints the binary's path.
#
#   bench/llama_server.sh [VERSION]        # then: LLAMA_SERVER=<that path> python3 bench/serve.py
#
# `--no-binary llama-cpp-python` (not `:all:`) takes the sdist of this one package only: with
# `:all:` pip would build every build dependency from source too, CMake included.
set -euo pipefail
VERSION=${1:-0.3.36}
cd "$(dirname "$0")/.."
DIR=target/llama-server
SRC=$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp
BIN=$SRC/build/bin/llama-server
if [ ! -x "$BIN" ]; then
    mkdir -p "$DIR"
    PY=${PYTHON:-python3}
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$DIR" >&2
    tar -xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
    command -v cmake >/dev/null && command -v ninja >/dev/null || "$PY" -m pip install cmake ninja >&2
    cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
    cmake --build "$SRC/build" --target llama-server -j "$(nproc)" >&2
fi
realpath "$BIN"
