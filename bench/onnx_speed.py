"""ONNX Runtime against PyTorch at inference: the default Unet (resnet18, efficientnet_b4) exported as
`trash export` writes it (normalisation and softmax inside), img/s side by side at 256 and 512 px.

Three sides per encoder and size: ONNX Runtime fp32 (CPU execution provider), PyTorch fp32 (the same
`Deployed` module), and PyTorch's fastest CPU path, bf16 autocast + channels-last (as the recipes predict).
The ratio row is ORT fp32 / PyTorch fp32 (same precision); bf16 is a figure beside it. On CPU each side runs at
one thread and is timed in CPU seconds (`bench.common.measure`, steady on a shared machine; ORT's session is
made with one intra-op thread to match). Random weights (speed does not depend on them), 11 classes.
"""

import copy
import tempfile
from pathlib import Path

import torch

from app.infer.onnx_export import Deployed, write_graph
from app.model.build import build_model
from app.recipe import Model
from bench.common import autocast, measure, row

ENCODERS = ("resnet18", "efficientnet_b4")
SIZES = (256, 512)
CLASSES = 11
BATCH = 4


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1  # as `measure` runs torch
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def steps(encoder: str, size: int, batch: int, folder: Path) -> dict:
    """{side: one forward of a fixed random batch} for ORT fp32, PyTorch fp32 and PyTorch bf16 channels-last."""
    model = build_model(Model(encoder=encoder, pretrained=False), CLASSES, size)[0].eval()
    deployed = Deployed(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    path = folder / f"{encoder}_{size}.onnx"
    write_graph(deployed, (size, size), False, path)
    session = ort_session(path)
    x = torch.rand(batch, 3, size, size) * 255
    x_np, x_cl = x.numpy(), x.contiguous(memory_format=torch.channels_last)
    fast = copy.deepcopy(deployed).to(memory_format=torch.channels_last)  # a copy: fp32 keeps its own layout

    def torch_fp32():
        with torch.inference_mode():
            deployed(x)

    def torch_bf16():
        with torch.inference_mode(), autocast("bf16"):
            fast(x_cl)

    return {
        "ort_fp32": lambda: session.run(None, {"image": x_np}),
        "torch_fp32": torch_fp32,
        "torch_bf16_cl": torch_bf16,
    }


def run(encoders=ENCODERS, sizes=SIZES, batch: int = BATCH, repeat: int = 3) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for encoder in encoders:
            for size in sizes:
                seconds = measure(steps(encoder, size, batch, Path(folder)), repeat=repeat)
                ips = {side: round(batch / s, 2) for side, s in seconds.items()}
                rows.append(
                    row(
                        f"onnx {encoder} {size}px: ONNX Runtime / PyTorch fp32 img/s",
                        ips["ort_fp32"] / ips["torch_fp32"],
                        "report",
                        None,
                        **{f"{side}_img_per_cpu_s": v for side, v in ips.items()},
                        batch=batch,
                    )
                )
    return rows
