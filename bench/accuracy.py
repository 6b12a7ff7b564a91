"""Accuracy side of the decoder defaults (not part of `make bench`: about 5 minutes per run on 2 CPU cores).

Trains recipes/trashcan.py with the sweep's settings (`SWEEP`: fold 0 of the 5-fold video split, pretrained
EfficientNet-Lite0, 160 px, 6 epochs, 0.9 CE + 0.1 focal) once per variant with `--set` overrides and prints
each run's validation mIoU (metrics.json) and wall time:

    trash data split ../shared/data/trashcan/annotations.json --folds 5 --group 'vid_\\d+' --out splits/trashcan
    .venv/bin/python -m bench.accuracy [VARIANT...] [--seeds 42,7]

Results are appended to bench/accuracy.jsonl (one line per run), so an interrupted sweep keeps what it measured.
"""

import json
import sys
import time

from bench.common import REPO

RECIPE = REPO / "recipes" / "trashcan.py"
OUT = REPO / "runs" / "bench-accuracy"
RESULTS = REPO / "bench" / "accuracy.jsonl"
SMP_WIDTHS = "model.decoder_widths=(256,128,64,32,16)"
#: the sweep's fixed setting (docs/benchmarks.md), pinned here since recipes/trashcan.py moved on to docs/results.md's
SWEEP = [
    "data.split=splits/trashcan",
    "data.size=160",
    "train.epochs=6",
    "train.lr=3e-3",
    "loss.ce=0.9",
    "loss.focal=0.1",
    "loss.dice=0",
]

#: variant name -> overrides of recipes/trashcan.py (which sets last_cross=False)
VARIANTS: dict[str, list[str]] = {
    "smp_unet": ["model.arch=smp_unet"],
    "unet fastai widths": ["model.decoder_widths=()"],
    "unet widths 256..16": [SMP_WIDTHS],
    "unet widths 128..16": ["model.decoder_widths=(128,64,32,16,16)"],
    "unet widths 256..16 + last_cross": [SMP_WIDTHS, "model.last_cross=true"],
    "unet widths 256..16 + blur": [SMP_WIDTHS, "model.blur=true"],
    "unet widths 256..16 + self_attention": [SMP_WIDTHS, "model.self_attention=true"],
    "unet widths 256..16 fp32": [SMP_WIDTHS, "train.precision=fp32"],
    "unet widths 256..16 channels_last": [SMP_WIDTHS, "train.channels_last=true"],
}


def run_variant(name: str, seed: int) -> dict:
    from app.train.run import fit

    started = time.time()
    run = fit(RECIPE, [*SWEEP, *VARIANTS[name], f"train.seed={seed}"], out=OUT)
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "variant": name,
        "seed": seed,
        "miou": metrics.get("miou"),
        "seconds": round(time.time() - started),
        "run": str(run),
    }


def main(args: list[str]) -> int:
    seeds = [42]
    if "--seeds" in args:
        at = args.index("--seeds")
        seeds = [int(s) for s in args[at + 1].split(",")]
        args = args[:at] + args[at + 2 :]
    for name in args or list(VARIANTS):
        for seed in seeds:
            result = run_variant(name, seed)
            with RESULTS.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
