#!/usr/bin/env bash
# Reproduces docs/results.md on ../shared/data/trashcan (about 75 minutes on 2 CPU cores).
# Each step is skipped when its output exists, so an interrupted run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
T=.venv/bin/trash
IMAGES=../shared/data/trashcan/images
TEST=splits/trashcan/fold0/val.json   # held-out videos: never trained on, never used to choose anything
OUT=runs/results
mkdir -p "$OUT"
step() { echo "== $*"; /usr/bin/time -f "   wall %e s" "$@"; }

[ -d splits/trashcan ] || step $T data split ../shared/data/trashcan/annotations.json --folds 5 --group 'vid_\d+' --out splits/trashcan
[ -d splits/trashcan-dev ] || step $T data split splits/trashcan/fold0/train.json --folds 3 --group 'vid_\d+' --out splits/trashcan-dev

# 1. the plain baseline: smp.Unet, same encoder and weights, 224 px, 12 epochs, dev fold 0, CE, Adam, fp32
[ -f $OUT/baseline/result.json ] || step .venv/bin/python -m bench.baseline --train splits/trashcan-dev/fold0/train.json \
    --test $TEST --test splits/trashcan-dev/fold0/val.json --images $IMAGES --size 224 --epochs 12 --out $OUT/baseline
# 2. the trash recipe, 3 folds of dev (fold 0 is the single model of the table)
[ -L $OUT/folds ] || { step $T fit recipes/trashcan.py --fold all --out $OUT/runs && ln -sfn "$(readlink -f $OUT/runs/trashcan/latest)" $OUT/folds; }
# 3. every fold model alone and the 3-fold ensemble, under each TTA set, on the test videos
[ -f $OUT/eval-folds/comparison.csv ] || step $T evaluate $OUT/folds --data $TEST --images $IMAGES \
    --compare identity,flip,d4,ms --out $OUT/eval-folds
[ -f $OUT/eval-baseline/evaluate.json ] || step $T evaluate $OUT/baseline/predictions/trashcan_fold0_val --data $TEST \
    --images $IMAGES --out $OUT/eval-baseline
# 4. pseudo-labels of the test photos from the ensemble (flip TTA), then the recipe's fold 0 retrained with them
[ -f splits/trashcan-pseudo.json ] || step $T pseudo $OUT/folds --images $IMAGES --data $TEST --tta --out splits/trashcan-pseudo.json
[ -L $OUT/pseudo ] || { step $T fit recipes/trashcan_pseudo.py --fold 0 --out $OUT/runs && ln -sfn "$(readlink -f $OUT/runs/trashcan_pseudo/latest)" $OUT/pseudo; }
[ -f $OUT/eval-pseudo/comparison.csv ] || step $T evaluate $OUT/pseudo --data $TEST --images $IMAGES \
    --compare identity,flip,d4,ms --out $OUT/eval-pseudo
echo "results under $OUT (docs/results.md)"
