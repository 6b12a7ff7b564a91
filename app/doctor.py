"""Install check run by `make` and by bench/gpu/run.sh: torch, torchvision and fastai must import together, and
which torch was found (version, CUDA, GPU) is printed.

The machine's cached CPU-only torch 2.13.0 has no matching torchvision: importing torchvision then
fails with `operator torchvision::nms does not exist`. This catches that (or any other broken pair).
pyproject.toml accepts torch from 2.11 (the GPU machine's, CUDA 13); the CPU install pins its pair in
constraints.txt, and the line printed says whether the torch found is that pin.
"""

import sys
from pathlib import Path

MIN_TORCH = (2, 11)
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def cpu_pin() -> str | None:
    """The torch version constraints.txt pins for the CPU install (None outside a checkout)."""
    if not CONSTRAINTS.is_file():
        return None
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith("torch=="):
            return line.split("==", 1)[1].strip()
    return None


def torch_found(torch) -> str:
    """'torch 2.11.0+cu130 (CUDA 13.0, NVIDIA H200)': what is installed, and how it compares with the CPU pin."""
    release = torch.__version__.split("+")[0]
    pin = cpu_pin()
    where = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"
    same = "" if pin is None else ("; the CPU pin" if release == pin else f"; not the CPU pin {pin} (constraints.txt)")
    return f"torch {torch.__version__} ({where}, {gpu}{same})"


def main() -> int:
    try:
        import fastai
        import timm
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.ones(1), 0.5)  # the op a mismatched torchvision lacks
        if tuple(int(p) for p in torch.__version__.split(".")[:2]) < MIN_TORCH:
            raise RuntimeError(f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}")
    except Exception as e:  # any import or operator failure means a broken install
        print(f"install check failed: {type(e).__name__}: {e}", file=sys.stderr)
        print("fix: rm -rf .venv && make test   (constraints.txt pins a torch/torchvision pair)", file=sys.stderr)
        return 1
    print(
        f"install ok: {torch_found(torch)}, torchvision {torchvision.__version__}, "
        f"fastai {fastai.__version__}, timm {timm.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
