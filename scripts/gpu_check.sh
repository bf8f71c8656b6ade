#!/usr/bin/env bash
# Checks that need a GPU, for a machine with one (CI has none): build the extension for the
# visible GPU, then run the named stages and leave their logs in $OUT (default gpu-out/).
#
#   bash scripts/gpu_check.sh env build cuda-tests all-tests sanitize bench train
#
# Time limits per stage come from variables (CUDA_TESTS_S, SANITIZE_S, TRAIN_S, ...: see
# below), so one call fits a lent machine's 10-minute command limit.
#
# Stages:
#   env         nvidia-smi, torch / nvcc / compute-sanitizer versions
#   build       build_ext --inplace for $ARCH (default: the GPU's own, e.g. 9.0), MAX_JOBS=16
#   cuda-tests  the tests that run on the GPU (ids with "cuda", not "cuda-emulated")
#   all-tests   the whole suite (pytest-xdist, $JOBS workers)
#   sanitize    compute-sanitizer memcheck / racecheck / synccheck / initcheck on GPU tests
#   bench       pool report, fused report and model step times on cuda
#   train       short float16 + GradScaler / bfloat16 autocast runs on cuda, and torchrun
#               with NCCL and SyncBatchNorm (issue 5)
# Each stage prints one summary line at the end: name, exit status, seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
JOBS=${JOBS:-12}
export PYTHONUNBUFFERED=1
summary=()

run_stage() {
  local name=$1 t0=$SECONDS rc
  shift
  echo "=== $name"
  "$@"
  rc=$?
  summary+=("$name: rc=$rc, $((SECONDS - t0)) s")
  if [ "$name" = build ] && [ "$rc" -ne 0 ]; then
    printf '%s\n' "${summary[@]}"
    exit 1
  fi
  return 0
}

# The last lines of a pytest log that say what happened.
pytest_summary() {
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$1" | tail -n "${2:-25}"
}

st_env() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
  nvcc --version | tail -n 2
  compute-sanitizer --version | head -n 2
  nproc
  which -a g++ c++ gcc | tr '\n' ' '; echo
  for c in /usr/bin/g++ /opt/gcc/bin/g++; do [ -x $c ] && $c --version | head -n 1; done
}

st_build() {
  # The toolchain torch was built with (the system's): a g++ that links its own libstdc++
  # into the extension (seen: /opt/gcc on a lent H100 machine) gives two copies of the
  # standard library's locale in one process, and the first c10::str of a number segfaults.
  # Its environment may name the wrapper in CXX already, so this overrides it.
  if [ -x /usr/bin/g++ ] && [ -z "${KEEP_CXX:-}" ]; then
    export CC=/usr/bin/gcc CXX=/usr/bin/g++
  fi
  env | grep -E "^(CC|CXX|LDFLAGS|CFLAGS|CXXFLAGS|CPPFLAGS)=" || true
  echo "compiler: ${CXX:-$(command -v c++)} ($(${CXX:-c++} --version | head -n 1))"
  local arch=${ARCH:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")}
  TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16} DECONVKERNELS_FORCE_CUDA=1 \
    "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log"; return 1; }
  "$PY" -c "import deconvkernels as dk; print(dk.build_info())"
  if ! ldd deconvkernels/_C*.so | grep -q "libstdc++"; then
    echo "the extension has the C++ standard library linked in (no libstdc++ in ldd): stop"
    return 1
  fi
  # A number formatted into an error message: segfaults with two libstdc++ copies.
  "$PY" -c "import torch, deconvkernels as dk
try:
    torch.ops.deconvkernels.max_pool2d_with_switches(
        torch.zeros(2, 2), [2, 2], [2, 2], [0, 0], [1, 1], False)
except (ValueError, RuntimeError) as e:
    print('error message ok:', str(e)[:60])"
}

st_cuda_tests() {
  timeout -s INT "${CUDA_TESTS_S:-300}" "$PY" -m pytest tests -q -rfEs -p no:cacheprovider \
    -k "cuda and not emulated" >"$OUT/cuda-tests.log" 2>&1
  local rc=$?
  pytest_summary "$OUT/cuda-tests.log"
  return $rc
}

st_all_tests() {
  timeout -s INT "${ALL_TESTS_S:-300}" "$PY" -m pytest tests -q -rfEs -p no:cacheprovider -n "$JOBS" \
    >"$OUT/all-tests.log" 2>&1
  local rc=$?
  pytest_summary "$OUT/all-tests.log" 40
  return $rc
}

st_sanitize() {
  local sel=${SANITIZE_K:-"cuda and not emulated"} rc=0 tool
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}; do
    echo "--- $tool"
    timeout -s INT "${SANITIZE_S:-120}" compute-sanitizer --tool "$tool" --error-exitcode 86 \
      --print-limit 20 "$PY" -m pytest ${SANITIZE_FILES:-tests/test_pool_parity.py \
      tests/test_unpool_deconv.py} -q -x -p no:cacheprovider -k "$sel" \
      >"$OUT/sanitize-$tool.log" 2>&1 || rc=$?
    grep -E "ERROR SUMMARY|passed|failed|Invalid|Race|Uninitialized|Barrier" \
      "$OUT/sanitize-$tool.log" | head -n 12
  done
  return $rc
}

st_bench() {
  local parts=" ${BENCH_PARTS:-pool fused model} "
  [[ $parts == *" pool "* ]] && timeout -s INT "${BENCH_POOL_S:-200}" "$PY" -m deconvkernels.bench --device cuda \
    --repeats "${REPEATS:-7}" --min-sample-ms "${MIN_SAMPLE_MS:-50}" --no-progress \
    >"$OUT/bench-pool.md" 2>&1
  [[ $parts == *" pool "* ]] && grep -E "^\| (pool|unpool|copy|case)|^## |copy" "$OUT/bench-pool.md" | tail -n 30
  [[ $parts == *" fused "* ]] && timeout -s INT "${BENCH_FUSED_S:-100}" "$PY" -m deconvkernels.bench_fused --device cuda --batch "${FUSED_BATCH:-8}" --no-progress \
    --min-sample-ms 50 >"$OUT/bench-fused.md" 2>&1
  [[ $parts == *" fused "* ]] && grep -E "\*\*|ours/chain|@" "$OUT/bench-fused.md" | tail -n 30
  [[ $parts == *" model "* ]] && timeout -s INT "${BENCH_MODEL_S:-100}" "$PY" -m deconvkernels.bench_model --device cuda --batch "${MODEL_BATCH:-8}" --no-progress \
    >"$OUT/bench-model.md" 2>&1
  [[ $parts == *" model "* ]] && tail -n 20 "$OUT/bench-model.md"
  return 0
}

st_train() {
  local amp rc=0
  for amp in ${AMPS:-fp16 bf16 none}; do
    echo "--- amp $amp"
    timeout -s INT "${TRAIN_S:-150}" "$PY" -m deconvkernels train --data synthetic --images 128 --width 0.25 --input-size 128 \
      --iterations 60 --batch-size 8 --device cuda --amp "$amp" --no-progress \
      --out "$OUT/run-$amp" >"$OUT/train-$amp.log" 2>&1 || rc=$?
    tail -n 4 "$OUT/train-$amp.log"
  done
  echo "--- torchrun, NCCL, SyncBatchNorm (one process: one GPU)"
  timeout -s INT "${TRAIN_S:-150}" torchrun --standalone --nproc_per_node=1 -m deconvkernels.train --data synthetic --images 128 \
    --width 0.25 --input-size 128 --iterations 20 --batch-size 8 --device cuda --amp bf16 \
    --sync-bn --no-progress --out "$OUT/run-ddp" >"$OUT/train-ddp.log" 2>&1 || rc=$?
  tail -n 6 "$OUT/train-ddp.log"
  rm -rf "$OUT"/run-*
  return $rc
}

for s in "$@"; do
  case "$s" in
    env) run_stage env st_env ;;
    build) run_stage build st_build ;;
    cuda-tests) run_stage cuda-tests st_cuda_tests ;;
    all-tests) run_stage all-tests st_all_tests ;;
    sanitize) run_stage sanitize st_sanitize ;;
    bench) run_stage bench st_bench ;;
    train) run_stage train st_train ;;
    *) echo "unknown stage: $s" >&2; exit 2 ;;
  esac
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
