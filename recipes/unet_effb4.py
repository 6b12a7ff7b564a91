"""Reference set-up: Unet + EfficientNet-B4, 0.9 CE + 0.1 Focal, 256 px then 512 px, effective batch 16."""

# The competition layout of data/README.md: data/train.json, data/val.json, file_names relative to data/.
data = dict(
    annotations="data/train.json",
    valid_annotations="data/val.json",
    images="data",
    size=512,
    stages=((256, 20), (512, 10)),  # progressive resizing: same model, 20 epochs at 256 px, then 10 at 512 px
    batch_size=8,
    augment="medium",  # flips, RandomRotate90, one warp (affine or elastic), mild colour
)
model = dict(encoder="efficientnet_b4", pretrained=True)  # timm weights from the local cache or the hub
loss = dict(ce=0.9, focal=0.1, focal_gamma=2.0)
train = dict(
    epochs=30,
    lr=1e-3,
    wd=1e-2,
    precision="auto",  # fp16 on a CUDA GPU, bf16 autocast on CPU
    channels_last=True,  # NHWC: with bf16 2.2x fp32 on CPU (docs/benchmarks.md)
    effective_batch=16,  # gradient accumulation: 2 micro-batches of 8 per optimizer step
    seed=42,
)
