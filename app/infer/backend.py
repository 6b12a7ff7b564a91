"""Which engine runs a run directory's network at inference, and `auto`: the fastest whose masks agree.

Engines (`ENGINES`, the `--backend` names besides `auto`):

* `torch`: the exported PyTorch module as it is, fp32 (what every other engine is held to);
* `bf16`: a copy of it in channels-last memory under bf16 autocast (CPUs with bf16 instructions, or a CUDA GPU
  with bf16);
* `onnx`: the network exported in memory (app/infer/onnx_export.py's exporter) and run by ONNX Runtime.

Each engine is a callable taking the normalised NCHW batch a run's test loader makes and returning logits, so TTA
views and tiles (app/infer/tta.py, app/infer/tiles.py) run on any of them unchanged.

`auto` measures, on the first batch of images, one warm and two timed forwards of each engine available here
(taking turns; the faster of each engine's two counts), keeps those whose argmax masks agree with `torch` on at
least `AGREE` of the pixels, and picks the fastest. Measured, not fixed, because the winner depends on the
machine (docs/deployment.md: bf16 + channels-last was 1.6-2.3x faster than fp32 on an AVX512-BF16 EPYC, and
emulated, about 10x slower, on AVX2-only hosts; ONNX Runtime fp32 beat PyTorch fp32 by 1.2-2.2x) and on the model.
Below `MIN_BATCHES` batches of images, measuring costs more than it can save: `auto` keeps `torch` and says so.
Members of one architecture (a fold group's) are timed once; each one's masks are still checked.

The CLI's `--backend` help names these engines without importing this module (it imports torch):
tests/infer/test_backend.py holds the two to the same names.
"""

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.errors import TrashError
from app.hardware import native_bf16
from app.infer.onnx_export import onnx_stride, write_graph
from app.infer.onnx_runtime import providers
from app.infer.options import view_spec
from app.infer.tta import parse_views
from app.registry import Registry, did_you_mean

AUTO = "auto"
#: identical argmax pixels against PyTorch fp32 on the first batch. Stricter than the ONNX file's 99.9%: on a real
#: run bf16 agreed on 99.93% of the pixels, yet only 27% of the submission's rows (run-length strings) stayed the
#: same; fp32 ONNX Runtime agreed on 100% and changed no row (docs/deployment.md)
AGREE = 0.9999
ROUNDS = 2  # timed forwards of each engine (after one warm-up): the fastest counts
#: fewer images than this many batches: auto keeps torch. Timing costs about 3 forwards per engine and an ONNX
#: export (20 s for a Lite0 Unet at 224 px, batch 8, on 2 busy cores, where ONNX Runtime then saved 0.35 s per
#: image with flip TTA): below ~60 images it costs more than it saves
MIN_BATCHES = 8


class Unavailable(Exception):
    """An engine that cannot run here (the message says why)."""


@dataclass(frozen=True)
class Engine:
    help: str
    make: object  # (module, input sizes it must take) -> callable NCHW normalised batch -> logits


def _torch(model: torch.nn.Module, sizes: set) -> torch.nn.Module:
    return model


class Bf16Net:
    """A channels-last copy of a network under bf16 autocast; logits back in float32."""

    def __init__(self, model: torch.nn.Module):
        self.device = next(model.parameters()).device
        self.net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.net(x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)).float()


def _bf16(model: torch.nn.Module, sizes: set) -> Bf16Net:

    device = next(model.parameters()).device
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Unavailable("this GPU has no bf16")
    if device.type == "cpu" and not native_bf16():
        raise Unavailable("this CPU has no bf16 instructions (emulated bf16 ran about 10x slower than fp32)")
    return Bf16Net(model)


class OrtNet:
    """A network exported to ONNX in memory, run by ONNX Runtime; NCHW in, logits out (as torch tensors)."""

    def __init__(self, model: torch.nn.Module, sizes: set):
        import onnxruntime as ort

        self.device = next(model.parameters()).device
        chosen = providers() if self.device.type == "cuda" else ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in chosen:
            raise Unavailable("ONNX Runtime has no CUDA execution provider in this install")
        dynamic = len(sizes) > 1
        if dynamic and any(side % onnx_stride(model) for hw in sizes for side in hw):
            raise Unavailable(f"the input sizes {sorted(sizes)} are not all multiples of the ONNX stride")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "net.onnx"
            try:
                write_graph(model.cpu().eval(), next(iter(sizes)), dynamic, path)
            except TrashError as e:
                raise Unavailable(str(e)) from None
            finally:
                model.to(self.device)
            self.session = ort.InferenceSession(path.read_bytes(), providers=chosen)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: feed})[0]).to(x.device)


ENGINES: Registry[Engine] = Registry(
    "inference backend",
    {
        "torch": Engine("PyTorch, fp32, as exported", _torch),
        "bf16": Engine("PyTorch, bf16 autocast + channels-last (CPUs with bf16 instructions, GPUs)", _bf16),
        "onnx": Engine("ONNX Runtime on the network exported in memory (fp32)", OrtNet),
    },
)
BACKENDS = (AUTO, *ENGINES)


def check_backend(name: str) -> str:
    """`name` when it is `auto` or an engine; a TrashError naming the choices otherwise."""
    if name not in BACKENDS:
        raise TrashError(f"--backend {name!r} is not one of {', '.join(BACKENDS)}{did_you_mean(name, BACKENDS)}")
    return name


def input_sizes(train_size: tuple[int, int], views) -> set:
    """The (H, W) inputs a member's network sees with these TTA views (tiles have the training size too)."""
    return {tuple(view.size(*train_size)) for view in views}


def fixed_engine(name: str, model: torch.nn.Module, sizes: set) -> tuple[object, dict]:
    """The engine `name` asked for by the user; TrashError when it cannot run here."""
    try:
        return ENGINES[name].make(model, sizes), {"engine": name, "reason": f"--backend {name}"}
    except Unavailable as e:
        raise TrashError(f"--backend {name}: {e}; use --backend auto or torch") from None


def measure_engines(model: torch.nn.Module, x: torch.Tensor, sizes: set) -> tuple[dict, dict, dict, dict]:
    """({engine: callable}, {engine: seconds of one forward of x}, {engine: its argmax of x}, {engine: why not}).

    Each engine runs once to warm up (torch: the caller's reference forward), then `ROUNDS` times, the engines
    taking turns; its time is the fastest of its rounds: on a shared machine one forward can take 3x another of
    the same batch, and taking turns keeps a busy moment from landing on one engine only.
    """
    made, unavailable = {}, {}
    for name, engine in ENGINES.items():
        try:
            made[name] = engine.make(model, sizes)
        except Unavailable as e:
            unavailable[name] = str(e)
    times, masks = {name: [] for name in made}, {}
    for round_ in range(ROUNDS + 1):  # round 0 warms up: ONNX Runtime and oneDNN plan their kernels then
        for name, net in made.items():
            if round_ == 0 and name == "torch":
                continue  # the caller's reference forward warmed it
            seconds, masks[name] = _timed_argmax(net, x)
            if round_:
                times[name].append(seconds)
    return made, {name: min(t) for name, t in times.items()}, masks, unavailable


def _timed_argmax(net, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        start = time.perf_counter()
        logits = net(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, logits.argmax(1)


def same_pixels(net, reference: torch.Tensor, x: torch.Tensor) -> float:
    """Share of argmax pixels `net` gives x that equal the reference argmax."""
    return _agreement(_timed_argmax(net, x)[1], reference)


def _agreement(mask: torch.Tensor, reference: torch.Tensor) -> float:
    return float((mask == reference).float().mean())


def pick(seconds: dict, agree: dict) -> str:
    """The fastest engine whose masks agree (torch always does: it is the reference)."""
    eligible = [name for name in seconds if name == "torch" or agree.get(name, 0.0) >= AGREE]
    return min(eligible, key=seconds.__getitem__)


def describe(choice: dict) -> str:
    """One line for the user: which engine, and why."""
    engine = choice["engine"]
    if choice["reason"] != "measured":
        return f"{engine} ({choice['reason']})"
    seconds, agree = choice["seconds"], choice["same_pixels"]
    timed = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(seconds.items(), key=lambda kv: kv[1]))
    refused = [f"{k} masks {agree[k]:.2%} identical" for k in agree if k != engine]
    text = f"{engine} (fastest whose masks agree with PyTorch fp32; one batch of {choice['images']}: {timed}"
    return text + "".join(f"; {r}, not used" for r in refused) + ")"


def choose_engines(members: list, chunk: list, options, n_images: int) -> None:
    """Sets each run member's `runner` (the engine's callable) and `backend` (what was chosen and why), measured on
    `chunk` (the first batch's (image_id, path) pairs) when `options.backend` is auto."""
    timed: dict = {}  # architecture -> (seconds, unavailable): a fold group's members are timed once
    for member in members:
        if member.learn is None:
            member.backend = {"engine": "onnx" if member.onnx is not None else "saved", "reason": "the file's own"}
            continue
        model = member.learn.model.eval()
        views = parse_views(view_spec(options.tta), multiple=getattr(model, "trash_size_multiple", 32))
        sizes = input_sizes(member.train_size, views)
        if options.backend != AUTO:
            if member.states and options.backend != "torch":
                raise TrashError(f"--backend {options.backend} with --topk: top-k epochs load into the PyTorch module")
            member.runner, member.backend = fixed_engine(options.backend, model, sizes)
        elif member.states:
            member.backend = {"engine": "torch", "reason": "top-k epochs load their weights into the PyTorch module"}
        elif n_images < MIN_BATCHES * options.batch_size:
            member.backend = {
                "engine": "torch",
                "reason": f"{n_images} images: too few to be worth timing the engines (from "
                f"{MIN_BATCHES * options.batch_size} on)",
            }
        else:
            member.runner, member.backend = _measured(member, model, chunk, sizes, timed)


def _measured(member, model: torch.nn.Module, chunk: list, sizes: set, timed: dict) -> tuple[object, dict]:
    x = member.learn.dls.test_dl([p for _, p in chunk], bs=len(chunk)).one_batch()[0]
    with torch.inference_mode():
        reference = model(x).argmax(1)
    key = (type(model).__name__, sum(p.numel() for p in model.parameters()), tuple(sorted(sizes)))
    made, masks = {}, {}
    if key not in timed:  # the timing forwards' masks are this member's: no forward twice
        made, seconds, masks, unavailable = measure_engines(model, x, sizes)
        timed[key] = (seconds, unavailable)
    seconds, unavailable = timed[key]
    agree, nets = {}, {}
    for name in sorted(seconds, key=seconds.__getitem__):  # fastest first; the first that agrees wins
        nets[name] = made[name] if name in made else ENGINES[name].make(model, sizes)
        if name == "torch":
            agree[name] = 1.0
        elif name in masks:  # its timing forwards ran on this member's batch
            agree[name] = _agreement(masks[name], reference)
        else:
            agree[name] = same_pixels(nets[name], reference, x)
        if agree[name] >= AGREE:
            break
    chosen = pick({k: seconds[k] for k in agree}, agree)
    return (None if chosen == "torch" else nets[chosen]), {
        "engine": chosen,
        "reason": "measured",
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "speedup": seconds["torch"] / seconds[chosen],
        "same_pixels": agree,
        "unavailable": unavailable,
        "images": len(chunk),
    }
