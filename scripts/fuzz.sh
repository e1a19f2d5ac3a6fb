#!/usr/bin/env bash
# Build and run one libFuzzer harness (fuzz/fuzz_<target>.c) with ASan + UBSan.
#   scripts/fuzz.sh build TARGET              -> build-fuzz/fuzz_TARGET
#   scripts/fuzz.sh run TARGET [SECONDS] [libFuzzer args...]
#        fuzzes for SECONDS (default 600), single process, corpus build-fuzz/corpus/TARGET
#        seeded from tests/data/fuzz/TARGET and fuzz/seeds/TARGET; log in build-fuzz/TARGET.log
#   scripts/fuzz.sh merge TARGET              -> minimise build-fuzz/corpus/TARGET into tests/data/fuzz/TARGET
# TARGET: safetensors, config, npy, tokenizer. Needs clang with libFuzzer (Debian: clang,
# libclang-rt-14-dev); the ctest replay (tests/test_fuzz_replay.c) needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?usage: scripts/fuzz.sh build|run|merge TARGET}
target=${2:?target: safetensors, config, npy or tokenizer}
out=build-fuzz
mkdir -p "$out"
CC=${CC:-clang}
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Isrc -Ifuzz)
srcs=(src/base.c src/safetensors.c src/npy.c src/qwen3.c src/draft_config.c fuzz/fuzz_targets.c)
# (the parsers only: the model code, kernels and OpenMP are not linked)
# JANSSON_SRC=<jansson 2.14 source tree>: build jansson instrumented too, so libFuzzer's
# coverage sees inside the JSON parser (much better guidance); else link Debian's libjansson.
if [ -n "${JANSSON_SRC:-}" ]; then
  jb=$out/jansson-build
  if [ ! -f "$jb/lib/libjansson.a" ]; then
    cmake -S "$JANSSON_SRC" -B "$jb" -DCMAKE_C_COMPILER="$CC" -DJANSSON_BUILD_DOCS=OFF -DJANSSON_EXAMPLES=OFF \
      -DJANSSON_WITHOUT_TESTS=ON -DJANSSON_BUILD_SHARED_LIBS=OFF \
      -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -g -O1 -fno-omit-frame-pointer" >/dev/null
    cmake --build "$jb" -j2 >/dev/null
  fi
  flags+=(-I"$jb/include")
  libs=("$jb/lib/libjansson.a" -lm)
else
  libs=($(pkg-config --cflags --libs jansson) -lm)
fi
srcs+=(src/tokenizer.c src/chat.c)
libs+=($(pkg-config --cflags --libs libpcre2-8 libutf8proc))
bin=$out/fuzz_$target
build() { $CC "${flags[@]}" "${srcs[@]}" "fuzz/fuzz_$target.c" "${libs[@]}" -o "$bin"; }
case $cmd in
  build) build; echo "$bin" ;;
  run)
    secs=${3:-600}; shift 3 || shift $#
    build
    mkdir -p "$out/corpus/$target"
    seeds=()
    for d in tests/data/fuzz/$target fuzz/seeds/$target; do [ -d "$d" ] && seeds+=("$d"); done
    export DSPARK_FUZZ_DATA=${DSPARK_FUZZ_DATA:-$PWD/tests/data}
    dict=(); [ -f "fuzz/$target.dict" ] && dict=(-dict="fuzz/$target.dict")
    "$bin" "${dict[@]}" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$out/crash-$target-" "$@" "$out/corpus/$target" "${seeds[@]}" 2>&1 | tee "$out/$target.log" ;;
  merge)
    build
    rm -rf "tests/data/fuzz/$target.new" && mkdir -p "tests/data/fuzz/$target.new"
    export DSPARK_FUZZ_DATA=${DSPARK_FUZZ_DATA:-$PWD/tests/data}
    # -use_counters=0: keep the inputs that add coverage edges, not hit-count buckets (the same
    # edges from about a third of the bytes: the corpora live in the repository)
    "$bin" -merge=1 -use_counters=0 "tests/data/fuzz/$target.new" "$out/corpus/$target" $( [ -d tests/data/fuzz/$target ] && echo tests/data/fuzz/$target ) \
        $( [ -d fuzz/seeds/$target ] && echo fuzz/seeds/$target )
    rm -rf "tests/data/fuzz/$target" && mv "tests/data/fuzz/$target.new" "tests/data/fuzz/$target"
    # crash regressions stay whether or not they add coverage now
    for f in fuzz/seeds/$target/regress-*; do [ -f "$f" ] && cp "$f" "tests/data/fuzz/$target/"; done
    du -sh "tests/data/fuzz/$target" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
