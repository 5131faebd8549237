#!/usr/bin/env bash
# Installs the page's npm dependencies from package-lock.json and copies the onnxruntime-web files the page
# loads into static/vendor/ort/ (not committed: ~14 MB). Run once after cloning; .ci/run runs it too.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund
dest=static/vendor/ort
mkdir -p "$dest"
for f in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
  cp node_modules/onnxruntime-web/dist/$f "$dest/$f"
done
echo "copied onnxruntime-web $(node -p "require('./node_modules/onnxruntime-web/package.json').version") into $dest"
