#!/usr/bin/env bash
# The real-model difficulty grid's committed tables (experiments/results/real_difficulty/), from
# one command:
#   bash experiments/real_difficulty_tables.sh [MODEL ...]   (default: both real models)
# Runs, per model, the three grids (finished cells are reused, so a second call only rewrites
# the tables):
#   experiments/real_difficulty.yaml                every estimator, every position
#   experiments/real_difficulty_tuned_sampled.yaml  the tuned lens fitted on the model's own text
#   experiments/real_difficulty_query.yaml          the query-only control (positions: query)
# then writes, per grid, `effective-depth compare`'s comparison.json and CSV tables (estimates
# with CIs per cell, per-prompt depths, accuracy, difficulty by correctness, Spearman's rho) and
# `effective-depth export`'s estimates.csv. The run directories stay under runs/ (not committed).
# TABLES_ONLY=1 skips the grids and only rewrites the tables from the runs there are (a resumed
# sampled-lens cell still samples its text again: its token ids are part of its fingerprint).
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(real/smollm2-135m-instruct real/gemma-3-270m)
for m in "${models[@]}"; do
  [ "${TABLES_ONLY:-0}" = 1 ] && break
  effective-depth grid --config experiments/real_difficulty.yaml --model "$m" --threads 2
  # sampling the text is 15x slower at two threads than at one on a busy 2-core CPU
  effective-depth grid --config experiments/real_difficulty_tuned_sampled.yaml --model "$m" --threads 1
  effective-depth grid --config experiments/real_difficulty_query.yaml --model "$m" --threads 2
done
for grid in real_difficulty real_difficulty_tuned_sampled real_difficulty_query; do
  runs=(runs/"$grid"/real_*)
  [ -e "${runs[0]}" ] || continue
  out=experiments/results/real_difficulty/"$grid"
  mkdir -p "$out"
  effective-depth compare "${runs[@]}" --out "$out" > "$out/compare.txt"
  effective-depth export "${runs[@]}" --kind estimates --out "$out/estimates.csv"
done
