#!/usr/bin/env bash
# Every GPU benchmark in one command (the GPU machine starts bare: one call, one script).
#
#   bash bench/run_all.sh                       # all sections
#   bash bench/run_all.sh ingest decode6b       # some of them
#
# Sections: gputest (tests/test_perf_fast_decode.py, CUDA test included), decode6b (ChatGLM3-6B shape: decode, streaming overhead, batched map stage), stream6b (the same
# without the map stage),
# ablate6b (stream6b plus each decode-step optimisation off vs on), kernels (per-layer kernel
# groups of one decode step, variants side by side), stepprof (every kernel of a captured decode step, bf16/INT8/INT4, torch.profiler), decode9b (GLM-4-9B shape: decode), ingest (text2vec-large shape embedding of 三国演义),
# memory (original-format 6B checkpoint, 7 shards: peak host RAM / GPU memory while loading),
# quant6b (ChatGLM3-6B shape: bf16 / INT8 / INT4 (tinygemm, and glmkb's Triton form) weight-only through ChatGLM.stream: tok/s, weight GiB,
# logits error and top-1 agreement vs bf16), tokenchoice (one step's token choice in a CUDA graph: greedy, top-p,
# top-k 50 + top-p, PyTorch vs the Triton kernels, batch 1 / 16), sampled6b (quant6b's table also at the default
# sampling, with FastDecodeOptions.sampling_kernel as set (on by default) and off), ropeattn6b (quant6b's table
# also with FastDecodeOptions.rope_in_attention on: the rotary and cache write inside the attention kernel), concurrency6b (1/4/16/32 concurrent ChatGLM.stream of
# 256 new tokens: aggregate tok/s, p50/p95 TTFT; CONC_QUANT=int4-triton etc. for a quantized model), prefill6b (captured prompt pass at 128/512/1024 tokens, with and without its swaps, bf16 / INT8 /
# INT4, and its kernels; ~3 min cold), int4gemv (6B layer GEMVs: bf16 cuBLAS vs INT4 tinygemm per
# group size and inner k-tiles), gemv (ChatGLM3-6B decode GEMVs at batch 1 and 16:
# cuBLAS, compiled and Triton bf16, compiled and Triton INT8, INT4 compiled and tinygemm, gemlite
# A16W4 / A16W8 where its wheel is in .whl/; us, GB/s,
# share of copy bandwidth, every Triton config swept; gemv.json + gemv.md; ~5-8 min cold), quant6b_triton (quant6b's bf16
# and INT8 rows with every decode GEMV on the Triton kernel, LM head included: quant_chatglm3-6b_gemv-triton.json), decattn (one decode
# token's attention, B 1/16, L 1024/4096: compiled PyTorch math vs the Triton flash_decode, 40 configs swept, ~5 min cold by estimate, not yet run; decode_attention.json),
# rowtiles (one-row INT8 / INT4 "runs" GEMVs of the 6B shapes over a wide tile grid, against the ops' own choice; row_tiles.json; ROWTILES_ARGS="--kinds int4 int4dot" adds the tensor-core probe, "--kinds int4mma" the mma.sync one, "--resident" one weight copy),
# int8tiles (INT8 prompt GEMMs at 64-1024 rows: a wide tile grid in both operand orders against bf16 cuBLAS and the
# cast + cuBLAS path; int8_tiles.json, TUNED lines), l2prefetch (an L2 prefetch of o_proj / gate_up before an idle window, INT8 and bf16: us saved per GEMV pair; l2_prefetch.json; run 25: none; --residency: GEMVs with the weight in HBM / L2 / L1, gemv_residency.json). gputest + quant6b + concurrency6b: ~9-11 min cold (each new batch or quantization shape compiles, ~40 s).
# JSON results and the log go to $OUT (default bench_out/). Needs .benchdata/ (python -m
# bench.prepare, run where ../shared/corpus exists) and, where glmkb's pure-Python dependencies
# are missing, their wheels in .whl/ (see docs/PERFORMANCE.md). CPU-only benchmarks
# (retrieval, ingest --cpu) run where the KB dependencies are: python -m bench.retrieval.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log"; }
START=$(date +%s)
BUDGET=${BUDGET:-100000}  # seconds for the whole script; a section gets at most what is left
run() {  # run SECONDS NAME CMD...
  local limit=$1 name=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  if [ "$left" -lt 60 ]; then log "skip $name: ${left}s left of BUDGET=$BUDGET"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "start $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/log"
  log "end $name rc=${PIPESTATUS[0]}"
}
sections=${*:-ingest decode6b decode9b memory}
log "sections: $sections"
"$PY" -c "import torch, transformers, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')" 2>&1 | tee -a "$OUT/log"
for s in $sections; do
  case $s in
    gputest)  run ${T_GPUTEST:-300} gputest env GLMKB_TEST_CORPUS=.benchdata/corpus "$PY" -m pytest tests/test_perf_fast_decode.py tests/test_quantized_fast_decode.py tests/test_quantization_int4.py tests/test_batching_fast_decode.py tests/test_warm_up.py tests/test_graph_memory.py tests/test_gemv.py tests/test_decode_attention.py tests/test_rope_cache.py tests/test_rope_attention.py tests/test_fast_decode_sampling.py tests/test_token_choice.py tests/test_token_sampling.py tests/test_int8_cast.py tests/test_int4_dequant.py tests/test_prompt_kernels.py tests/test_int4_runs.py tests/test_chatglm_legacy_quantized.py -q -x -p no:cacheprovider ;;
    ingest)   run ${T_INGEST:-120} ingest "$PY" -m bench.ingest --gpu --repeat 3 ;;
    decode6b) run ${T_DECODE6B:-420} decode6b "$PY" -m bench.decode --shape chatglm3-6b --map --repeat ${REPEAT:-3} ;;
    stream6b) run ${T_STREAM6B:-300} stream6b "$PY" -m bench.decode --shape chatglm3-6b --repeat ${REPEAT:-5} ;;
    ablate6b) run ${T_ABLATE6B:-420} ablate6b "$PY" -m bench.decode --shape chatglm3-6b --ablate --repeat ${REPEAT:-5} ;;
    stepprof) run ${T_STEPPROF:-420} stepprof "$PY" -m bench.step_profile ${STEPPROF_ARGS:-} ;;
    rowtiles) run ${T_ROWTILES:-300} rowtiles "$PY" -m bench.row_tiles ${ROWTILES_ARGS:-} ;;
    kernels)  run ${T_KERNELS:-120} kernels "$PY" -m bench.kernels ;;
    decode9b) run ${T_DECODE9B:-300} decode9b "$PY" -m bench.decode --shape glm4-9b --repeat ${REPEAT:-3} ;;
    memory)   run ${T_MEMORY:-240} memory "$PY" -m bench.memory --shards 7 ;;
    gemv)     run ${T_GEMV:-600} gemv "$PY" -m bench.gemv ;;
    int8tiles) run ${T_INT8TILES:-600} int8tiles "$PY" -m bench.int8_tiles ${INT8TILES_ARGS:-} ;;
    quant6b_triton) run ${T_QUANT6B:-330} quant6b_triton "$PY" -m bench.decode --shape chatglm3-6b --quantization none int8 --gemv-kernel triton --repeat ${REPEAT:-3} ;;
    quant6b)  run ${T_QUANT6B:-330} quant6b "$PY" -m bench.decode --shape chatglm3-6b --quantization none int8 int4 int4-triton --repeat ${REPEAT:-3} ;;
    tokenchoice) run ${T_TOKENCHOICE:-120} tokenchoice "$PY" -m bench.token_choice ;;
    ropeattn6b) run ${T_ROPEATTN6B:-420} ropeattn6b "$PY" -m bench.decode --shape chatglm3-6b --quantization none int8 int4-triton --rope-attention-ablation --repeat ${REPEAT:-3} ;;
    sampled6b) run ${T_SAMPLED6B:-330} sampled6b "$PY" -m bench.decode --shape chatglm3-6b --quantization none int8 int4-triton --sampled --repeat ${REPEAT:-3} ;;
    int4gemv) run ${T_INT4GEMV:-180} int4gemv "$PY" -m bench.int4_gemv ;;
    prefill6b) run ${T_PREFILL6B:-360} prefill6b "$PY" -m bench.prefill --shape chatglm3-6b --ablation ;;
    l2prefetch) run ${T_L2PREFETCH:-240} l2prefetch "$PY" -m bench.l2_prefetch ;;
    decattn)  run ${T_DECATTN:-600} decattn "$PY" -m bench.decode_attention ;;
    concurrency6b) run ${T_CONC6B:-240} concurrency6b "$PY" -m bench.concurrency --shape chatglm3-6b --streams 1,4,16,32 --new-tokens 256 --quantization ${CONC_QUANT:-none} --repeat ${REPEAT:-3} ;;
    adapters6b)  # the CUDA test of a P-tuning prefix on the decode graph, then ChatGLM3-6B shape: decode with a 128-token
      # prefix vs without on the fast path, LoRA merged vs base, LoRA training tok/s + peak memory at seq 1024 batch 4 (~3-4 min)
      run ${T_ADAPTERSTEST:-120} adapterstest env GLMKB_TEST_CORPUS=.benchdata/corpus "$PY" -m pytest tests/test_adapters_ptuning_fast_decode.py -q -x -p no:cacheprovider -k cuda
      run ${T_ADAPTERS6B:-240} adapters6b "$PY" -m bench.adapters --shape chatglm3-6b --repeat ${REPEAT:-3} ;;
    *) log "unknown section $s" ;;
  esac
done
log "done"
