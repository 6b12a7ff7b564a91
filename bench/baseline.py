"""The plain baseline of docs/results.md: what a notebook without trash would train.

smp.Unet with the same timm encoder and the same pretrained weights as the trash recipe, the same image size,
epochs, batch size and split; cross-entropy, Adam at a constant lr, a plain PyTorch loop in fp32, images squished
to the training size with no augmentation, no TTA. It shares only the *measuring* code with trash: COCO masks from
app.data (pycocotools), the model builder (`model.arch=smp_unet`), and `trash evaluate`, which scores the
predictions folder this script writes (fp16 probabilities at each image's original size, the format of
`trash predict --save-probs`), so both sides are scored by the same code at the same resolution.

    .venv/bin/python -m bench.baseline --train splits/trashcan-dev/fold0/train.json \\
        --test splits/trashcan/fold0/val.json --images ../shared/data/trashcan/images \\
        --encoder tf_efficientnet_lite0 --size 224 --epochs 12 --out runs/baseline

With `--cpu-budget 3600` it trains (shuffled epochs, the last partial one included) until its own process has
used that many CPU-seconds, user + sys as /usr/bin/time counts them, loading the images included; `--hflip`,
`--precision bf16` (CPU autocast) and `--channels-last` are the settings of docs/results.md's trashcan_large
baseline. Its last weights are scored.

Writes OUT/predictions/<the test json path's last 3 parts, e.g. trashcan_fold0_val>/ (probs/*.npy +
predictions.json), OUT/history.csv and OUT/result.json
(test mIoU both ways, per-class IoU, wall time). Not part of `make bench` (minutes to tens of minutes).
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from app.data.coco import IGNORE, load_coco
from app.data.masks import rasterize
from app.recipe import Model


def load_pairs(json_path: str, images: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images of a COCO json squished to size x size (uint8 RGB) and their class masks (nearest)."""
    coco = load_coco(json_path)
    xs, ys = [], []
    for im in coco.images:
        bgr = cv2.imread(str(Path(images) / im.file_name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{Path(images) / im.file_name}: cannot be read")
        xs.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_LINEAR))
        ys.append(cv2.resize(rasterize(coco, im), (size, size), interpolation=cv2.INTER_NEAREST))
    return np.stack(xs), np.stack(ys), coco.codes


def to_input(batch: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def cpu_seconds() -> float:
    """User + system CPU-seconds of this process (every thread), as /usr/bin/time counts them."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(args, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """(epoch, images, masks) of shuffled batches, horizontally flipped at random with --hflip; endless with a
    CPU budget, else `args.epochs` epochs (the last partial batch of each epoch is dropped)."""
    epoch = 0
    while args.cpu_budget or epoch < args.epochs:
        order = rng.permutation(len(x))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start : start + args.batch_size]
            xb, yb = x[idx], y[idx]
            if args.hflip:
                flip = rng.random(len(idx)) < 0.5
                xb, yb = xb.copy(), yb.copy()
                xb[flip], yb[flip] = xb[flip, :, ::-1], yb[flip, :, ::-1]
            yield epoch, xb, yb
        epoch += 1


def train(args) -> dict:
    from app.model.build import build_model

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    x, y, codes = load_pairs(args.train, args.images, args.size)
    cfg = Model(arch="smp_unet", encoder=args.encoder, pretrained=args.pretrained)
    model, mean, std = build_model(cfg, len(codes), args.size)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)  # a constant lr: no schedule
    history, losses, seen, last = ["epoch,train_loss,images,cpu_seconds,seconds"], [], 0, 0
    print(f"baseline: {len(x)} training images, {len(codes)} classes, {args.encoder} smp.Unet, {args.size} px")
    for epoch, xb, yb in batches(args, x, y, rng):
        if epoch != last:
            history.append(_row(last, losses, seen, started))
            losses, last = [], epoch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(to_input(xb, mean_t, std_t).contiguous(memory_format=layout))
            loss = F.cross_entropy(logits.float(), torch.from_numpy(yb).long(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        seen += len(xb)
        if args.cpu_budget and cpu_seconds() >= args.cpu_budget:
            break
    history.append(_row(last, losses, seen, started))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.csv").write_text("\n".join(history) + "\n")
    train_cpu = cpu_seconds()
    return {
        "model": model.eval(),
        "mean": mean_t,
        "std": std_t,
        "codes": codes,
        "images_seen": seen,
        "train_seconds": time.time() - started,
        "train_cpu_seconds": train_cpu,
    }


def _row(epoch: int, losses: list[float], seen: int, started: float) -> str:
    row = f"{epoch},{np.mean(losses):.5f},{seen},{cpu_seconds():.0f},{time.time() - started:.0f}"
    print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, {seen} images, {cpu_seconds():.0f} CPU-s", flush=True)
    return row


@torch.no_grad()
def write_predictions(state: dict, json_path: str, images: str, size: int, folder: Path) -> None:
    """fp16 probabilities at each image's original size: a predictions folder `trash evaluate` reads."""
    from app.infer.members import PREDICTIONS_INDEX

    model = state["model"].eval()
    coco = load_coco(json_path)
    (folder / "probs").mkdir(parents=True, exist_ok=True)
    for im in coco.images:
        rgb = cv2.cvtColor(cv2.imread(str(Path(images) / im.file_name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        logits = model(to_input(small[None], state["mean"], state["std"]))
        logits = F.interpolate(logits, size=(im.height, im.width), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)[0].numpy().astype(np.float16)
        target = folder / "probs" / Path(im.file_name).with_suffix(".npy")  # predict --save-probs' names
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, probs)
    (folder / PREDICTIONS_INDEX).write_text(json.dumps({"classes": state["codes"], "images": len(coco.images)}))


def prediction_name(json_path: str) -> str:
    """splits/trashcan/fold0/val.json -> trashcan_fold0_val (unique across the splits of docs/results.md)."""
    return "_".join(Path(json_path).with_suffix("").parts[-3:]).replace("..", "up")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="COCO json of the training images")
    p.add_argument("--test", required=True, action="append", help="COCO json(s) to predict and score")
    p.add_argument("--images", required=True, help="folder the jsons' file_names are relative to")
    p.add_argument("--encoder", default="tf_efficientnet_lite0")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--cpu-budget", type=float, default=0, help="train until the process used this many CPU-s")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: CPU autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=False, help="random horizontal flips")
    p.add_argument("--out", default="runs/baseline")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from app.infer.evaluate import evaluate

    started = time.time()
    state = train(args)
    result = {
        "args": vars(args),
        "train_seconds": round(state["train_seconds"]),
        "train_cpu_seconds": round(state["train_cpu_seconds"], 1),
        "images_seen": state["images_seen"],
        "scores": {},
    }
    for test in args.test:
        folder = Path(args.out) / "predictions" / prediction_name(test)
        write_predictions(state, test, args.images, args.size, folder)
        report = evaluate([folder], test, args.images)
        result["scores"][test] = {k: report[k] for k in ("miou", "miou_per_image", "pixel_accuracy", "per_class_iou")}
        print(f"{test}: mIoU {report['miou']:.4f} (per image {report['miou_per_image']:.4f}) [{folder}]")
    result["wall_seconds"] = round(time.time() - started)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
