#!/usr/bin/env bash
# Everything a lent GPU session should run, in as few device calls as possible.
#
#   bash bench/gpu_session.sh [install|test|sanitize|bench|all]...    (default: all)
#
# Writes logs and results under $OUT (the device tool's output folder; /tmp/l2rec-gpu
# elsewhere) and prints a short summary last. Each stage is independent after `install`,
# so a session can spread the stages over several calls (each call is a fresh checkout
# on a machine that may have been given back: `install` runs first whenever the package
# is not importable). Stages:
#   install   pip install --no-deps --no-build-isolation -e . (builds l2rec_kernels._C
#             with nvcc for sm_90a) and prints backend_info()
#   test      the whole suite on the GPU (the gpu-marked tests included)
#   sanitize  compute-sanitizer --tool memcheck over the GPU kernel tests
#   bench     the full bench/latency.py sweep and its plots, into $OUT/results
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/l2rec-gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

run_stage() {  # name, then the command; logs to $OUT/name.log, records rc and seconds
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name: rc=$rc in $((SECONDS - t0)) s ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))"
  return $rc
}

install() {
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" L2REC_FORCE_CUDA_BUILD=1 \
    run_stage install "$PY" -m pip install --no-deps --no-build-isolation -e .
  "$PY" -c "import l2rec_kernels as lk, json; print(json.dumps(lk.backend_info(), indent=1))" \
    | tee -a "$SUMMARY"
}

ensure_installed() {
  "$PY" -c "import l2rec_kernels._C" >/dev/null 2>&1 || install
}

test_stage() {
  ensure_installed
  run_stage test "$PY" -m pytest -q -p no:cacheprovider tests
  grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -20 | tee -a "$SUMMARY"
}

sanitize_stage() {
  ensure_installed
  # memcheck over the kernels' GPU tests: every launch checked for out-of-bounds and
  # misaligned accesses. --error-exitcode makes any finding fail the stage.
  run_stage sanitize compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_dpmoe_linear.py tests/test_route.py tests/test_topk_items.py \
    tests/test_batch_metadata.py tests/test_cuda_ext.py
  grep -E "ERROR SUMMARY|========= (Invalid|Program hit)" "$OUT/sanitize.log" | sort | uniq -c \
    | head -10 | tee -a "$SUMMARY"
}

bench_stage() {
  ensure_installed
  run_stage bench "$PY" bench/latency.py --out "$OUT/results"
  local csv
  csv=$(ls -t "$OUT"/results/latency_gpu_*.csv 2>/dev/null | head -n 1)
  [ -n "$csv" ] && run_stage plot "$PY" bench/plot.py "$csv"
  grep -E "^(plain|L2Rec|Fused|PEFT|dpmoe_linear|topk_items|mm_topk)" "$OUT/bench.log" \
    | cut -c1-150 | tail -40 >> "$SUMMARY"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
for stage in "${STAGES[@]}"; do
  case "$stage" in
    install) install ;;
    test) test_stage ;;
    sanitize) sanitize_stage ;;
    bench) bench_stage ;;
    all) install; test_stage; sanitize_stage; bench_stage ;;
    *) echo "unknown stage $stage (install|test|sanitize|bench|all)"; exit 2 ;;
  esac
done
echo "==== summary ($SUMMARY)"
cat "$SUMMARY"
