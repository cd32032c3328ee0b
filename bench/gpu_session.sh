#!/usr/bin/env bash
# A time-boxed GPU check: runs the named stages (install, tests, memcheck, tuning,
# benchmarks) one after another on a GPU machine, stops starting work at a deadline, and
# always ends with a summary. Logs and results go to one folder; a stage that writes many
# files packs them into one archive.
#
#   bash bench/gpu_session.sh [OPTIONS] STAGE...     e.g. `bash bench/gpu_session.sh test-kernels`
#
# Options (every one has a default; docs/gpu.md has the table):
#   --deadline S          stop starting work S seconds after the start; a running stage's command
#                         is cut off there (rc 124). 0: no deadline. Default: 570, window-1 330,
#                         window-2 390, all 0
#   --out DIR             logs and results (default: $OUT when set, else /tmp/l2rec-gpu)
#   --tune-s S            window-2's cap on tune (60)
#   --kernels-s S         window-2's cap on bench-kernels (100)
#   --model-s S           window-2's cap on bench-model (120)
#   --batch-reserve-s S   window-2 stops bench-compiled S seconds before the deadline, for
#                         bench-batch (45)
#   --tune-shape NAME     the model shape tune tunes (qwen3-0.6b-paper)
#   --sanitize-tests "F ..."  the test files memcheck runs (the kernel test files)
#   --sanitize-k EXPR     a pytest -k expression for memcheck (window-1: the large-shape tests left out)
#   --compile-users N     bench-compiled's batch size (1)
#   --batch-users N, --batch-items N   bench-batch's users (2048) and catalogue (10000)
#   --bench-args "ARGS"   bench-custom's bench/latency.py arguments (required by it)
#   --xdist-workers N     pytest-xdist workers for the test stages (auto)
#
# Stages, and the files each writes besides summary.txt (and install.log when it installed):
#   window-1       install, backend_info(), the kernel and model test files with their GPU
#                  tests (tests.log), then compute-sanitizer memcheck over the GPU-marked kernel
#                  tests but the two large-shape ones (sanitize.log; the tests stop 120 s before
#                  the deadline to leave it room): backend_info.json, tests.log, sanitize.log
#   window-2       bf16 timings, each table one latency.py run: tune (python -m l2rec_kernels.tune
#                  --shape qwen3-0.6b-paper --batch 1,16,64 --seq-len 256 --items 1000000
#                  --k 10,100,1000: fills the backend="auto" cache, copied out as
#                  autotune-<gpu>.json); bench-kernels (dpmoe_linear vs F.linear vs the torch
#                  path, M = 64, 1024, 8192, every pair of d_in 1024, 4096 and d_out 3072, 4096,
#                  E = 4, r = 8, 16; topk_items vs mm + topk, N = 1M, d = 128, B = 1, 64, 1024,
#                  k = 10, 100, 1000; batch_metadata); bench-model (FusedL2Rec vs the plain
#                  backbone vs L2Rec at qwen3-0.6b-paper, B = 1, 16, 64, T = 256, eager, peak
#                  memory; the train section's optimizer step at B = 16); bench-compiled
#                  (compile_for_serving reduce-overhead replay at B = 1; it compiles for minutes,
#                  so it is the step cut off when time runs out); bench-batch. Every CSV, plot
#                  and log is packed into window-2-results.tgz; autotune-*.json
#   install        pip install --no-deps --no-build-isolation -e . with L2REC_FORCE_CUDA_BUILD=1
#                  (builds l2rec_kernels._C for $TORCH_CUDA_ARCH_LIST, default 9.0a);
#                  backend_info() goes into the summary
#   test-kernels   the op tests (tests/test_{dpmoe_linear,route,topk_items,batch_metadata,
#                  cuda_ext,autotune}.py, gpu-marked included), `-n auto` when pytest-xdist is
#                  importable, else serial: test-kernels.log
#   test-models    every other test file, serially: test-models.log
#   sanitize       compute-sanitizer --tool memcheck over the gpu-marked op tests, with
#                  PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own
#                  allocation (an out-of-bounds access inside a cached block is caught): sanitize.log
#   tune           python -m l2rec_kernels.tune for --tune-shape at B = 1,16,64, T = 256 and the
#                  autotune cache file: tune.log, autotune-*.json
#   bench-kernels  tune, then bench/latency.py --sections dpmoe_linear,route,topk_items,
#                  batch_metadata and its plots, packed into bench-kernels-results.tgz
#   bench-model    bench/latency.py --sections model and its plots: bench-model.log, csv, plots
#   bench-compiled bench/latency.py --sections model --compile at B = --compile-users: CUDA-graph
#                  replay of FusedL2Rec[triton] and of the plain backbone next to the eager
#                  providers: bench-compiled.log, csv, plots
#   bench-batch    bench/batch_bench.py --ways loop --model-shape qwen3-0.6b-paper --device cuda:
#                  one GPU actor's batch-scoring work (UserScorer: checks, prompts, bucketing,
#                  recommend) in-process at T = 256, B = 64 (no Ray): bench-batch.log, csv, md
#   bench-custom   bench/latency.py with --bench-args and its plots, e.g. --bench-args
#                  "--set topk_items.k=10,100,1000" (`python bench/latency.py --help` lists
#                  every SECTION.AXIS): bench-custom.log, csv, plots
#   test, bench    test-kernels + test-models, bench-kernels + bench-model
#   all            install, test-kernels, test-models, sanitize, bench-kernels (tune included)
#                  and bench-model, one after another
#
# Every stage first installs the package if this checkout's build is not already installed
# there (at most one build attempt per run: a failed build is recorded and reported by every
# later stage, which then runs without l2rec_kernels._C).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
usage() { echo "usage: bash bench/gpu_session.sh [OPTIONS] STAGE... (see the header)"; exit 2; }
OUT="${OUT:-/tmp/l2rec-gpu}"
DEADLINE="" TUNE_S=60 KERNELS_S=100 MODEL_S=120 BATCH_RESERVE_S=45 TUNE_SHAPE=qwen3-0.6b-paper
SANITIZE_TESTS="" SANITIZE_K="" COMPILE_USERS=1 BATCH_USERS=2048 BATCH_ITEMS=10000
BENCH_ARGS_TEXT="" XDIST_WORKERS=auto
STAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --deadline|--out|--tune-s|--kernels-s|--model-s|--batch-reserve-s|--tune-shape|--sanitize-tests|\
    --sanitize-k|--compile-users|--batch-users|--batch-items|--bench-args|--xdist-workers)
      [ $# -ge 2 ] || { echo "$1 needs a value"; usage; }
      case "$1" in
        --deadline) DEADLINE=$2 ;;  --out) OUT=$2 ;;  --tune-s) TUNE_S=$2 ;;
        --kernels-s) KERNELS_S=$2 ;;  --model-s) MODEL_S=$2 ;;  --batch-reserve-s) BATCH_RESERVE_S=$2 ;;
        --tune-shape) TUNE_SHAPE=$2 ;;  --sanitize-tests) SANITIZE_TESTS=$2 ;;  --sanitize-k) SANITIZE_K=$2 ;;
        --compile-users) COMPILE_USERS=$2 ;;  --batch-users) BATCH_USERS=$2 ;;
        --batch-items) BATCH_ITEMS=$2 ;;  --bench-args) BENCH_ARGS_TEXT=$2 ;;
        --xdist-workers) XDIST_WORKERS=$2 ;;
      esac
      shift 2 ;;
    -h|--help) awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) echo "unknown option $1"; usage ;;
    *) STAGES+=("$1"); shift ;;
  esac
done
for n in "$TUNE_S" "$KERNELS_S" "$MODEL_S" "$BATCH_RESERVE_S" "$COMPILE_USERS" "$BATCH_USERS" "$BATCH_ITEMS" \
         ${DEADLINE:+"$DEADLINE"}; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "a seconds or size option got '$n', not a whole number"; usage; }
done
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ ${#STAGES[@]} -eq 0 ] && usage
if [ -n "$DEADLINE" ]; then LIMIT=$DEADLINE
elif [[ " ${STAGES[*]} " == *" all "* ]]; then LIMIT=0
elif [[ " ${STAGES[*]} " == *" window-1 "* ]]; then LIMIT=330
elif [[ " ${STAGES[*]} " == *" window-2 "* ]]; then LIMIT=390
else LIMIT=570; fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
# A test stage cut off at the deadline still prints its counts and failures so far
# (tests/conftest.py turns the SIGTERM of `timeout` into pytest's Ctrl-C).
export L2REC_TESTS_TERM_AS_INTERRUPT=1
STATE=$(mktemp -d)            # this run's markers: install.tried, install.failed
trap 'rm -rf "$STATE"' EXIT
STAMP=build/gpu_session.stamp # the sources of the installed build (build/ is git-ignored)
KERNEL_TESTS=(tests/test_dpmoe_linear.py tests/test_route.py tests/test_topk_items.py
              tests/test_batch_metadata.py tests/test_cuda_ext.py tests/test_autotune.py)
# The model test files: every model path on the GPU (the serving, batch and docs tests run
# no GPU code of their own; test-models runs them too).
MODEL_TESTS=(tests/test_fused.py tests/test_train_step.py tests/test_compile.py
             tests/test_compile_for_serving.py tests/test_inference_dtype.py
             tests/test_layer_shortcuts.py tests/test_paper_preset.py tests/test_reference.py
             tests/test_recommend.py tests/test_backbones.py)
# Left out of memcheck (10-100x slower there): the large-shape GPU tests.
SANITIZE_SKIP="not large_catalogue and not bench_shapes"

note() { echo "$*" | tee -a "$SUMMARY"; }

time_left() {  # seconds until the deadline (a large number without one)
  if [ "$LIMIT" -gt 0 ]; then echo $((LIMIT - SECONDS)); else echo 999999; fi
}

run_stage() {  # name, then the command: logs to $OUT/name.log, cut off at the deadline
  # (or STAGE_CAP seconds after it starts, when that comes first: a stage's own budget)
  local name=$1; shift
  local left t0=$SECONDS rc why="the deadline (--deadline $LIMIT)"
  left=$(time_left)
  if [ "$left" -lt 30 ]; then
    note "$name: NOT RUN (${left}s left before the deadline; run it in its own call)"
    return 124
  fi
  if [ -n "${STAGE_CAP:-}" ] && [ "$STAGE_CAP" -lt "$left" ]; then
    left=$STAGE_CAP why="its cap of ${STAGE_CAP} s"
  fi
  timeout --kill-after=15 "$left" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "gpu_session: cut off at $why" >> "$OUT/$name.log"; fi
  note "$name: rc=$rc in $((SECONDS - t0)) s$(ext_note) ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))"
  return $rc
}

ext_note() { [ -e "$STATE/install.failed" ] && echo " WITHOUT l2rec_kernels._C (its build failed: install.log)"; }

sources_stamp() { cat setup.py csrc/*.cu csrc/*.cpp csrc/*.h 2>/dev/null | sha256sum | cut -d' ' -f1; }

installed() {  # this checkout, with its extension built from the current sources
  [ "$(cat "$STAMP" 2>/dev/null)" = "$(sources_stamp)" ] &&
    "$PY" -c "import os, sys, l2rec_kernels, l2rec_kernels._C, l2rec_serving
here = os.path.realpath('.') + os.sep
sys.exit(not all(os.path.realpath(m.__file__).startswith(here) for m in (l2rec_kernels, l2rec_serving)))" \
      >/dev/null 2>&1
}

install() {  # the one build attempt of this run
  [ -e "$STATE/install.tried" ] && return 0
  touch "$STATE/install.tried"
  rm -f "$STAMP"
  if TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" L2REC_FORCE_CUDA_BUILD=1 \
      run_stage install "$PY" -m pip install --no-deps --no-build-isolation -e .; then
    mkdir -p build && sources_stamp > "$STAMP"
  else
    grep -E "error|Error" "$OUT/install.log" | head -5 > "$STATE/install.failed"
    note "install: the CUDA extension build FAILED (install.log); installing without it"
    cat "$STATE/install.failed" >> "$SUMMARY"
    L2REC_SKIP_CUDA_BUILD=1 "$PY" -m pip install --no-deps --no-build-isolation -e . \
      >> "$OUT/install.log" 2>&1 || note "install: even without the extension the install failed"
  fi
  "$PY" -c "import l2rec_kernels as lk, json; print(json.dumps(lk.backend_info(), indent=1))" \
    2>&1 | tee -a "$SUMMARY"
}

ensure_installed() {  # after a failed build, stages say so (ext_note) instead of rebuilding
  [ -e "$STATE/install.tried" ] || installed || install
}

xdist_args() {  # -n auto when pytest-xdist is importable
  if "$PY" -c "import xdist" >/dev/null 2>&1; then echo "-n $XDIST_WORKERS"; fi
}

test_kernels() {
  ensure_installed
  # shellcheck disable=SC2046  # xdist_args is zero or two words
  run_stage test-kernels "$PY" -m pytest -q -p no:cacheprovider $(xdist_args) "${KERNEL_TESTS[@]}"
  grep -E "^(FAILED|ERROR)" "$OUT/test-kernels.log" 2>/dev/null | head -20 | tee -a "$SUMMARY"
}

test_models() {
  ensure_installed
  local ignore=() f
  for f in "${KERNEL_TESTS[@]}"; do ignore+=(--ignore "$f"); done
  run_stage test-models "$PY" -m pytest -q -p no:cacheprovider tests "${ignore[@]}"
  grep -E "^(FAILED|ERROR)" "$OUT/test-models.log" 2>/dev/null | head -20 | tee -a "$SUMMARY"
}

sanitize() {  # STAGE_CAP, --sanitize-tests and --sanitize-k (a pytest -k expression) narrow it
  local files kexpr=()
  read -r -a files <<< "${SANITIZE_TESTS:-${KERNEL_TESTS[*]}}"
  [ -n "$SANITIZE_K" ] && kexpr=(-k "$SANITIZE_K")
  ensure_installed
  # --error-exitcode makes any finding fail the stage. No caching allocator: every tensor is
  # its own cudaMalloc, so memcheck sees the end of each one. No autotune measurements (each
  # would run every path 20-odd times more under the checker); a scratch cache.
  ( export PYTORCH_NO_CUDA_MEMORY_CACHING=1 L2REC_AUTOTUNE=0 L2REC_CACHE_DIR="$STATE/sanitize-cache"
    run_stage sanitize compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$PY" -m pytest -q -p no:cacheprovider -m gpu "${kexpr[@]}" "${files[@]}" )
  grep -E "ERROR SUMMARY|========= (Invalid|Program hit)" "$OUT/sanitize.log" 2>/dev/null | sort | uniq -c \
    | head -10 | tee -a "$SUMMARY"
}

autotune_file() {  # the backend="auto" cache file of the current GPU
  "$PY" -c "import torch; from l2rec_kernels import _autotune as a
print(a.cache_path(a.device_name('cuda', torch.cuda.current_device())))" 2>/dev/null
}

tune() {  # python -m l2rec_kernels.tune at the model's shape; the cache file into $OUT
  local file
  ensure_installed
  run_stage tune "$PY" -m l2rec_kernels.tune --shape "$TUNE_SHAPE" \
    --batch 1,16,64 --seq-len 256 --items 1000000 --k 10,100,1000
  file=$(autotune_file)
  if [ -n "$file" ] && [ -f "$file" ]; then
    cp "$file" "$OUT/autotune-$(basename "$file")"
    note "tune: $(grep -c '"choice"' "$file") cached choice(s); $OUT/autotune-$(basename "$file")"
  else
    note "tune: no autotune cache file (${file:-its path is unknown})"
  fi
  grep -E "^# " "$OUT/tune.log" 2>/dev/null | tee -a "$SUMMARY"
}

window_1() {  # install, backend_info, the kernel and model tests, memcheck (header)
  local left cap
  ensure_installed
  "$PY" -c "import json, l2rec_kernels as lk; print(json.dumps(lk.backend_info(), indent=1))" \
    > "$OUT/backend_info.json" 2>&1 || note "backend_info() failed (backend_info.json)"
  left=$(time_left)
  cap=$((left - ${SANITIZE_RESERVE_S:-120}))
  [ "$cap" -lt 60 ] && cap=60
  # The tests' own autotune measurements (tiny shapes) go to a scratch cache.
  # shellcheck disable=SC2046  # xdist_args is zero or two words
  ( export L2REC_CACHE_DIR="$STATE/test-cache"
    STAGE_CAP=$cap run_stage tests "$PY" -m pytest -q -p no:cacheprovider $(xdist_args) \
      "${KERNEL_TESTS[@]}" "${MODEL_TESTS[@]}" )
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" 2>/dev/null | tail -25 | tee -a "$SUMMARY"
  SANITIZE_K="${SANITIZE_K:-$SANITIZE_SKIP}" sanitize
}

pack_results() {  # archive, marker file, then the names (globs) kept apart: every file of
  # $OUT newer than the marker goes into the archive (a call brings back at most 8 files)
  local archive=$1 marker=$2 f k keep packed=()
  shift 2
  for f in "$OUT"/*; do
    [ -f "$f" ] && [ "$f" -nt "$marker" ] || continue
    keep=0
    for k in "$archive" "$@"; do
      # shellcheck disable=SC2053  # $k is a glob on purpose
      [[ "$(basename "$f")" == $k ]] && keep=1
    done
    [ $keep -eq 1 ] || packed+=("$(basename "$f")")
  done
  [ ${#packed[@]} -gt 0 ] || return 0
  if tar -czf "$OUT/$archive" -C "$OUT" "${packed[@]}"; then
    (cd "$OUT" && rm -f "${packed[@]}")
    note "packed ${#packed[@]} file(s) into $archive: $(echo "${packed[*]}" | cut -c1-400)"
  else
    note "packing $archive FAILED: the files stay in $OUT (a call brings back only 8)"
  fi
}

bench_kernels() {  # the kernel sections at their default sizes, after tune fills the auto cache
  touch "$STATE/bench-kernels.start"
  sleep 1  # (file times have a one-second grain on some file systems)
  tune
  bench bench-kernels --sections dpmoe_linear,route,topk_items,batch_metadata
  pack_results bench-kernels-results.tgz "$STATE/bench-kernels.start" summary.txt install.log \
    "autotune-*.json" "latency_gpu_*.csv" "*_speedup.png"
}

window_2() {  # the timings (header); each table one latency.py run
  ensure_installed
  touch "$STATE/window-2.start"
  sleep 1
  STAGE_CAP=$TUNE_S tune
  STAGE_CAP=$KERNELS_S bench bench-kernels --dtype bf16 --sections dpmoe_linear,topk_items,batch_metadata \
    --set dpmoe_linear.seq_len=32 --set dpmoe_linear.seqs_per_view=1,16,128 \
    --set dpmoe_linear.d_in=1024,4096 --set dpmoe_linear.d_out=3072,4096 \
    --set dpmoe_linear.experts=4 --set dpmoe_linear.rank=8,16 \
    --set topk_items.items=1000000 --set topk_items.dim=128 --set topk_items.batch=1,64,1024 \
    --set topk_items.k=10,100,1000 --set batch_metadata.users=1,64,1024 --set batch_metadata.tokens=256
  STAGE_CAP=$MODEL_S bench bench-model --dtype bf16 --sections model,train \
    --set model.shape=qwen3-0.6b-paper --set model.users=1,16,64 --set model.seq_len=256 \
    --set train.shape=qwen3-0.6b-paper --set train.users=16 --set train.seq_len=256
  local left
  left=$(time_left)
  STAGE_CAP=$((left - BATCH_RESERVE_S)) bench bench-compiled --dtype bf16 --sections model --compile \
    --set model.shape=qwen3-0.6b-paper --set model.users=1 --set model.seq_len=256
  bench_batch
  pack_results window-2-results.tgz "$STATE/window-2.start" summary.txt install.log "autotune-*.json"
}

bench_batch() {  # one GPU actor's batch-scoring work at qwen3-0.6b-paper, T = 256 (no Ray here)
  ensure_installed
  run_stage bench-batch "$PY" bench/batch_bench.py --ways loop --model-shape qwen3-0.6b-paper \
    --device cuda --items "$BATCH_ITEMS" --users "$BATCH_USERS" \
    --batch-size 64 --out "$OUT"
  grep -E "users/s" "$OUT/bench-batch.log" 2>/dev/null | tail -3 | tee -a "$SUMMARY"
}

bench() {  # stage name, then latency.py's arguments
  local name=$1 csv
  shift
  ensure_installed
  run_stage "$name" "$PY" bench/latency.py "$@" --out "$OUT"
  csv=$(sed -n 's/^# wrote //p' "$OUT/$name.log" 2>/dev/null | tail -n 1)
  if [ -n "$csv" ] && [ -f "$csv" ]; then
    "$PY" bench/plot.py "$csv" >> "$OUT/$name.log" 2>&1 || note "$name: plot failed ($name.log)"
  fi
  grep -E "^(== |Fused|plain_backbone|L2Rec|dpmoe_linear|route\[|topk_items|batch_metadata\[|reference_einsum|plain_linear|mm_topk)" \
    "$OUT/$name.log" 2>/dev/null | cut -c1-150 \
    | head -40 >> "$SUMMARY"
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    install|test-kernels|test-models|test|sanitize|tune|bench-kernels|bench-model|bench-compiled|bench-batch|bench|all) ;;
    window-1|window-2) ;;
    bench-custom)
      [ -n "$BENCH_ARGS_TEXT" ] || {
        echo "bench-custom needs --bench-args, e.g. --bench-args \"--set topk_items.k=10,100,1000\""
        exit 2; } ;;
    *) echo "unknown stage $stage (window-1|window-2|install|test-kernels|test-models|test|sanitize|tune|bench-kernels|bench-model|bench-compiled|bench-batch|bench-custom|bench|all)"
       exit 2 ;;
  esac
done
read -r -a BENCH_ARGS <<< "$BENCH_ARGS_TEXT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
for stage in "${STAGES[@]}"; do
  case "$stage" in
    install) install ;;
    test-kernels) test_kernels ;;
    test-models) test_models ;;
    test) test_kernels; test_models ;;
    sanitize) sanitize ;;
    tune) tune ;;
    window-1) window_1 ;;
    window-2) window_2 ;;
    bench-kernels) bench_kernels ;;
    bench-model) bench bench-model --sections model ;;
    bench-compiled) bench bench-compiled --sections model --compile --set "model.users=$COMPILE_USERS" ;;
    bench-custom) bench bench-custom "${BENCH_ARGS[@]}" ;;
    bench-batch) bench_batch ;;
    bench) bench_kernels
           bench bench-model --sections model ;;
    all) install; test_kernels; test_models; sanitize
         bench_kernels; bench bench-model --sections model ;;
  esac
done
echo "==== summary ($SUMMARY; $(find "$OUT" -maxdepth 1 -type f | wc -l) files in $OUT)"
cat "$SUMMARY"
