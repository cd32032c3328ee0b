#!/usr/bin/env bash
# What a lent GPU session runs, in stages short enough for one device call each (a call
# runs at most 10 minutes and brings back at most 8 files from $OUT).
#
#   bash bench/gpu_session.sh STAGE...      e.g. `bash bench/gpu_session.sh test-kernels`
#
# Run one stage per call. Each call is a fresh copy of the working tree, possibly on a fresh
# machine: every stage first installs the package if this checkout's build is not already
# installed there (at most one build attempt per script run: a failed build is recorded in a
# marker file and reported by every later stage, which then runs without l2rec_kernels._C).
# Logs and results go straight into $OUT (the device tool's output folder; /tmp/l2rec-gpu
# elsewhere); the summary is printed last.
#
# Files each run writes in $OUT: summary.txt, install.log when it installed, and the stage's own:
#   install        pip install --no-deps --no-build-isolation -e . with L2REC_FORCE_CUDA_BUILD=1
#                  (builds l2rec_kernels._C for $TORCH_CUDA_ARCH_LIST, default 9.0a);
#                  backend_info() goes into the summary.                  2 files in all
#   test-kernels   the op tests (tests/test_{dpmoe_linear,route,topk_items,batch_metadata,
#                  cuda_ext}.py, gpu-marked included), `-n auto` when pytest-xdist is
#                  importable, else serial: test-kernels.log              at most 3
#   test-models    every other test file, serially: test-models.log      at most 3
#   sanitize       compute-sanitizer --tool memcheck over the gpu-marked op tests, with
#                  PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own
#                  allocation (an out-of-bounds access inside a cached block is caught);
#                  L2REC_SANITIZE_TESTS="tests/a.py ..." narrows it if it runs out of time:
#                  sanitize.log                                           at most 3
#   bench-kernels  bench/latency.py --sections dpmoe_linear,route,topk_items and its plots: bench-kernels.log,
#                  latency_gpu_full_*.csv, *_speedup.png, *_{dpmoe_linear,route,topk_items}_ms.png   at most 8
#   bench-model    bench/latency.py --sections model and its plots: bench-model.log,
#                  latency_gpu_full_*.csv, *_model_latency.png, *_speedup.png   at most 6
#   bench-compiled bench/latency.py --sections model --compile at B = $L2REC_COMPILE_USERS
#                  (default 1; one batch size per call: each compiles the Qwen3-0.6B-shaped
#                  model): CUDA-graph replay of FusedL2Rec[triton] and of the plain backbone
#                  next to the eager providers (issue 14): bench-compiled.log, csv, plots
#                                                                         at most 6
#   bench-custom   bench/latency.py $L2REC_BENCH_ARGS and its plots, for chosen sizes, e.g.
#                  L2REC_BENCH_ARGS="--set topk_items.k=10,100,1000 --set topk_items.batch=1,4096"
#                  (`python bench/latency.py --help` lists every SECTION.AXIS; a --set runs only
#                  the sections it names): bench-custom.log, latency_gpu_full_*.csv, plots
#                                          at most 8 unless it runs all four sections
#   test, bench    test-kernels + test-models, bench-kernels + bench-model (as `all`: may need
#                  more than one call's time and files)
#   all            install and every stage above but bench-custom, one after another: for a
#                  machine with no call limit (about 20 files; no time limit unless
#                  L2REC_CALL_LIMIT_S is set)
#
# Time: the run stops starting work L2REC_CALL_LIMIT_S seconds after it began (default 570,
# i.e. inside a 10-minute call; 0 = no limit, the default for `all`): each stage's command
# is cut off at that deadline (rc 124), later stages are reported as not run, and the
# summary is still printed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-/tmp/l2rec-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && { echo "usage: bash bench/gpu_session.sh STAGE... (see the header)"; exit 2; }
if [[ " ${STAGES[*]} " == *" all "* ]]; then LIMIT="${L2REC_CALL_LIMIT_S:-0}"; else LIMIT="${L2REC_CALL_LIMIT_S:-570}"; fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
STATE=$(mktemp -d)            # this run's markers: install.tried, install.failed
trap 'rm -rf "$STATE"' EXIT
STAMP=build/gpu_session.stamp # the sources of the installed build (build/ is git-ignored)
KERNEL_TESTS=(tests/test_dpmoe_linear.py tests/test_route.py tests/test_topk_items.py
              tests/test_batch_metadata.py tests/test_cuda_ext.py)

note() { echo "$*" | tee -a "$SUMMARY"; }

time_left() {  # seconds until the deadline (a large number without one)
  if [ "$LIMIT" -gt 0 ]; then echo $((LIMIT - SECONDS)); else echo 999999; fi
}

run_stage() {  # name, then the command: logs to $OUT/name.log, cut off at the deadline
  local name=$1; shift
  local left t0=$SECONDS rc
  left=$(time_left)
  if [ "$left" -lt 30 ]; then
    note "$name: NOT RUN (${left}s left before the deadline; run it in its own call)"
    return 124
  fi
  timeout --kill-after=15 "$left" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  [ $rc -eq 124 ] && echo "gpu_session: cut off at the deadline (L2REC_CALL_LIMIT_S=$LIMIT)" >> "$OUT/$name.log"
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
  if "$PY" -c "import xdist" >/dev/null 2>&1; then echo "-n ${L2REC_XDIST_WORKERS:-auto}"; fi
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

sanitize() {
  local files
  read -r -a files <<< "${L2REC_SANITIZE_TESTS:-${KERNEL_TESTS[*]}}"
  ensure_installed
  # --error-exitcode makes any finding fail the stage. No caching allocator: every tensor is
  # its own cudaMalloc, so memcheck sees the end of each one.
  ( export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    run_stage sanitize compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$PY" -m pytest -q -p no:cacheprovider -m gpu "${files[@]}" )
  grep -E "ERROR SUMMARY|========= (Invalid|Program hit)" "$OUT/sanitize.log" 2>/dev/null | sort | uniq -c \
    | head -10 | tee -a "$SUMMARY"
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
  grep -E "^(== |Fused|plain_backbone|L2Rec|dpmoe_linear|route\[|topk_items)" "$OUT/$name.log" 2>/dev/null | cut -c1-150 \
    | head -40 >> "$SUMMARY"
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    install|test-kernels|test-models|test|sanitize|bench-kernels|bench-model|bench-compiled|bench|all) ;;
    bench-custom)
      [ -n "${L2REC_BENCH_ARGS:-}" ] || {
        echo "bench-custom needs L2REC_BENCH_ARGS, e.g. L2REC_BENCH_ARGS=\"--set topk_items.k=10,100,1000\""
        exit 2; } ;;
    *) echo "unknown stage $stage (install|test-kernels|test-models|test|sanitize|bench-kernels|bench-model|bench-compiled|bench-custom|bench|all)"
       exit 2 ;;
  esac
done
read -r -a BENCH_ARGS <<< "${L2REC_BENCH_ARGS:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
for stage in "${STAGES[@]}"; do
  case "$stage" in
    install) install ;;
    test-kernels) test_kernels ;;
    test-models) test_models ;;
    test) test_kernels; test_models ;;
    sanitize) sanitize ;;
    bench-kernels) bench bench-kernels --sections dpmoe_linear,route,topk_items ;;
    bench-model) bench bench-model --sections model ;;
    bench-compiled) bench bench-compiled --sections model --compile --set "model.users=${L2REC_COMPILE_USERS:-1}" ;;
    bench-custom) bench bench-custom "${BENCH_ARGS[@]}" ;;
    bench) bench bench-kernels --sections dpmoe_linear,route,topk_items
           bench bench-model --sections model ;;
    all) install; test_kernels; test_models; sanitize
         bench bench-kernels --sections dpmoe_linear,route,topk_items; bench bench-model --sections model ;;
  esac
done
echo "==== summary ($SUMMARY; $(find "$OUT" -maxdepth 1 -type f | wc -l) files in $OUT)"
cat "$SUMMARY"
