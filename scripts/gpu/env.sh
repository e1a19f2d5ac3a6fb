# sourced on the GPU machine by check.sh and bench/gpu_ab.sh: unpacks build-cuda/gpu-pkg.tar.xz
# (scripts/gpu/pack.sh) once and sets B (its binaries), LD_LIBRARY_PATH and DSPARK_TEST_DATA
PKG_DIR=${PKG_DIR:-/tmp/dspark-gpu}
if [ ! -x "$PKG_DIR/bin/dspark" ]; then
    [ -f build-cuda/gpu-pkg.tar.xz ] || { echo "no build-cuda/gpu-pkg.tar.xz: run scripts/gpu/pack.sh first" >&2; exit 1; }
    mkdir -p "$PKG_DIR" && tar -C "$PKG_DIR" -xJf build-cuda/gpu-pkg.tar.xz
fi
export LD_LIBRARY_PATH=$PKG_DIR/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DSPARK_TEST_DATA=tests/data
B=$PKG_DIR/bin
