#!/usr/bin/env bash
# Build the CUDA binaries here and pack them with their runtime libraries for a GPU machine that
# has a driver and libcublas but not Debian's jansson/PCRE2/utf8proc/OpenBLAS (README "On the
# GPU"): build-cuda/gpu-pkg.tar.xz, ~13 MB. On the GPU machine, scripts/gpu/check.sh and
# bench/gpu_ab.sh unpack it (the device tool: carry build-cuda/gpu-pkg.tar.xz).
#   usage: scripts/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f build-cuda/CMakeCache.txt ] || cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DDSPARK_CUDA=ON \
    -DDSPARK_CPU_LIBS=OFF -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null
cmake --build build-cuda -j "$(nproc)" >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/lib"
cp build-cuda/dspark build-cuda/tests/test_cuda build-cuda/tests/test_cuda_engine build-cuda/tests/test_cuda_sample build-cuda/tests/test_cuda_warp_sum \
   build-cuda/bench/bench_cuda build-cuda/bench/bench_icache build-cuda/bench/bench_weight_read "$tmp/bin/"
strip --strip-debug "$tmp"/bin/*
# the shared libraries dspark links that the GPU machine lacks (libcublas comes from its toolkit)
ldd build-cuda/dspark | awk '/=> \// {print $3}' | grep -E 'jansson|pcre2|utf8proc|openblas|gfortran|quadmath|gomp' |
    while read -r l; do cp -L "$l" "$tmp/lib/"; done
tar -C "$tmp" -cJf build-cuda/gpu-pkg.tar.xz.tmp bin lib
mv build-cuda/gpu-pkg.tar.xz.tmp build-cuda/gpu-pkg.tar.xz
echo "build-cuda/gpu-pkg.tar.xz: $(du -h build-cuda/gpu-pkg.tar.xz | cut -f1)"
