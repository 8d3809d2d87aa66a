#!/usr/bin/env bash
# llama.cpp's own llama-server, built from the source llama-cpp-python's sdist vendors (no web UI: it
# would need npm at build time), into bench/.cache/llama.cpp/ once; bench.editor finds it there (or at
# $LLAMA_SERVER). About 10 minutes on 2 cores. Without AMX (see the Makefile's bench target for why).
# Exits 0 without a server where it does not build: the benchmark's rows then say so.
set -u
VERSION=0.3.36
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/bench/.cache/llama.cpp"
BIN="$CACHE/build/bin/llama-server"  # beside the shared libraries it links
[ -x "$BIN" ] && { echo "llama-server: $BIN"; exit 0; }
mkdir -p "$CACHE" && cd "$CACHE" || exit 0
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
if "$ROOT/.venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d . \
  && tar xzf "llama_cpp_python-$VERSION.tar.gz" \
  && cmake -S "llama_cpp_python-$VERSION/vendor/llama.cpp" -B build -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
     -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" > cmake.log 2>&1 \
  && cmake --build build --target llama-server -j"$(nproc)" > build.log 2>&1; then
  echo "llama-server: $BIN"
else
  echo "llama-server did not build (logs in $CACHE): the editor benchmark runs without it"
fi
rm -rf "llama_cpp_python-$VERSION" "llama_cpp_python-$VERSION.tar.gz"
exit 0
