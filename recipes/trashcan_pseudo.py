"""recipes/trashcan.py plus pseudo-labels of the held-out test photos from its 3-fold ensemble (docs/results.md)."""

# First: trash pseudo runs/trashcan/<--fold all group> --images ../shared/data/trashcan/images
#            --data splits/trashcan/fold0/val.json --tta --out splits/trashcan-pseudo.json
# Pseudo-labelled images only ever train; unconfident pixels (< 0.9) are ignored by the loss.
base = "trashcan.py"
data = dict(pseudo="splits/trashcan-pseudo.json")
