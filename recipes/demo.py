"""Tiny demo: Unet + ResNet-18 from scratch on the synthetic demo data, 128 px, about 3 min on 2 CPU cores."""

# Paths are relative to the folder `trash` runs in (the repository root for `make demo`).
data = dict(
    annotations="data/demo/train.json",
    valid_annotations="data/demo/val.json",
    images="data/demo",
    size=128,
    batch_size=8,
    augment="light",
)
# last_cross=False drops DynamicUnet's full-resolution ResBlock: 2.2x faster training at 128 px (measured).
model = dict(encoder="resnet18", pretrained=False, last_cross=False)
loss = dict(ce=1.0)
# auto: fp16 on CUDA; bf16 autocast on CPUs with bf16 in hardware, else fp32 (app/train/learner.py PRECISIONS)
train = dict(epochs=10, lr=3e-3, precision="auto", channels_last=True, seed=42)
