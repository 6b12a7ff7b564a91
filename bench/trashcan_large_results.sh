#!/usr/bin/env bash
# Every number of docs/results.md's trashcan_large section, on ../shared/data/trashcan_large (6,169 photos, 266 videos).
#
#   bench/trashcan_large_results.sh            # all of it: about 14 hours on 2 CPU cores, one run at a time
#   bench/trashcan_large_results.sh recipe     # one group of steps: splits, baseline, recipe, ablation, tta, table
#
# Each step is skipped when its output exists (delete a folder under runs/results-large/ to redo it). Runs never
# share the machine: the two sides run one after the other, each alone, each timed with /usr/bin/time (user + sys of
# the process and every process it starts), each with a mask cache of its own (made inside its own budget).
set -euo pipefail
cd "$(dirname "$0")/.."
T=.venv/bin/trash
PY=.venv/bin/python
DATA=../shared/data/trashcan_large
OUT=runs/results-large
TRAIN=splits/trashcan_large-dev/fold0/train.json  # what both sides train on (the recipe validates on its fold0/val.json)
TEST=splits/trashcan_large/fold0/val.json  # held-out videos: nothing is chosen on them
BUDGET=3600
SEEDS=${SEEDS:-"1 2"}  # SEEDS=1 bench/trashcan_large_results.sh recipe: one seed
mkdir -p "$OUT"

timed() {  # timed NAME COMMAND...: runs COMMAND once, alone, with its own mask cache; NAME/time.txt = "user sys wall"
  local name=$1; shift
  [ -f "$OUT/$name/time.txt" ] && return 0
  mkdir -p "$OUT/$name"
  echo "== $name: $*"
  TRASH_CACHE="$OUT/$name/cache" /usr/bin/time -f "%U %S %e" -o "$OUT/$name/time.tmp" "$@" > "$OUT/$name/log.txt" 2>&1
  mv "$OUT/$name/time.tmp" "$OUT/$name/time.txt"
  rm -rf "$OUT/$name/cache"
}

scored() {  # scored NAME MODEL [evaluate options...]: the test-set scores of MODEL in NAME/eval/evaluate.json
  local name=$1 model=$2; shift 2
  [ -f "$OUT/$name/eval/evaluate.json" ] && return 0
  $T evaluate "$model" --data "$TEST" --images "$DATA/images" --out "$OUT/$name/eval" "$@" > "$OUT/$name/eval.txt"
}

splits() {
  [ -d splits/trashcan_large ] || $T data split "$DATA/annotations.json" --folds 5 --group 'vid_\d+' --seed 0 \
    --out splits/trashcan_large
  [ -d splits/trashcan_large-dev ] || $T data split splits/trashcan_large/fold0/train.json --folds 10 \
    --group 'vid_\d+' --seed 0 --out splits/trashcan_large-dev
}

baseline() {  # the plain loop of issue 16, as specified (bf16 autocast) and in fp32 (this CPU has no bf16 in hardware)
  for precision in ${PRECISIONS:-bf16 fp32}; do  # PRECISIONS=fp32: one of them
    for seed in $SEEDS; do
      local name="baseline-$precision-s$seed"
      timed "$name" $PY -m bench.baseline --train "$TRAIN" --test "$TEST" --images "$DATA/images" \
        --encoder tf_efficientnet_lite0 --size 256 --batch-size 8 --lr 1e-3 --hflip --channels-last \
        --precision "$precision" --cpu-budget "$BUDGET" --seed "$seed" --out "$OUT/$name/run"
      scored "$name" "$OUT/$name/run/predictions/trashcan_large_fold0_val"
    done
  done
}

recipe_run() {  # recipe_run NAME [--set k=v]...: recipes/trashcan_large.py as shipped (plus overrides), scored
  local name=$1; shift
  timed "$name" $T fit recipes/trashcan_large.py --out "$OUT/$name/run" "$@"
  scored "$name" "$OUT/$name/run/trashcan_large/latest"
}

recipe() {
  for seed in $SEEDS; do recipe_run "recipe-s$seed" --set "train.seed=$seed"; done
}

ablation() {  # each lever of the recipe switched off alone, seed 1
  recipe_run "no-aspect" --set train.seed=1 --set data.aspect=1.0 --set data.crop=0
  recipe_run "no-crop" --set train.seed=1 --set data.crop=0
  recipe_run "no-dice" --set train.seed=1 --set loss.dice=0
  recipe_run "two-threads" --set train.seed=1 --set train.threads=0
  recipe_run "batch-8" --set train.seed=1 --set data.batch_size=8
  recipe_run "no-budget-schedule" --set train.seed=1 --set train.cpu_budget=0 --set train.epochs=1
}

tta() {  # flip and d4 TTA on the final model (seed 1), one pass
  scored "recipe-s1-tta" "$OUT/recipe-s1/run/trashcan_large/latest" --compare identity,flip,d4
}

table() {
  $PY -m bench.results_table "$OUT"
}

steps=${1:-"splits baseline recipe ablation tta table"}
for step in $steps; do "$step"; done
