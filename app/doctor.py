"""Install check run by `make`: torch, torchvision and fastai must import together.

The machine's cached CPU-only torch 2.13.0 has no matching torchvision: importing torchvision then
fails with `operator torchvision::nms does not exist`. This catches that (or any other broken pair).
"""

import sys


def main() -> int:
    try:
        import fastai
        import timm
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.ones(1), 0.5)  # the op a mismatched torchvision lacks
    except Exception as e:  # any import or operator failure means a broken install
        print(f"install check failed: {type(e).__name__}: {e}", file=sys.stderr)
        print("fix: rm -rf .venv && make test   (pyproject.toml pins a torch/torchvision pair)", file=sys.stderr)
        return 1
    cuda = "cuda available" if torch.cuda.is_available() else "cpu only"
    print(
        f"install ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"fastai {fastai.__version__}, timm {timm.__version__} ({cuda})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
