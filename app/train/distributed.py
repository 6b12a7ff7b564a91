"""Data-parallel training on PyTorch DDP through Hugging Face accelerate, as fastai integrates it.

`trash fit RECIPE --gpus N` relaunches itself with torchrun (`python -m torch.distributed.run --standalone
--nproc_per_node N -m app fit RECIPE ...`); `accelerate launch -m app fit RECIPE ...` and a multi-node torchrun
work the same way, since every launcher sets RANK / WORLD_SIZE / MASTER_ADDR. In each process:

- `init()` joins the process group: NCCL with one GPU per process (LOCAL_RANK), gloo on CPU;
- the learner gets `Trainer`, fastai's `DistributedTrainer` (accelerate wraps the model in DDP, each rank sees
  its share of every batch) with two changes for CPU and for exact metrics: index broadcasts work on gloo
  (fastai moves them to CUDA), and validation is split into disjoint shards without fastai's padding, so no
  image is counted twice;
- the mIoU metric sums the ranks' confusion matrices before computing IoU (app.model.metrics.MeanIoU), never an
  average of per-rank mIoU;
- only rank 0 creates the run directory and writes files (history, checkpoints, export, metrics).

`data.batch_size` is per process: the effective batch is batch_size x processes (x accumulation), and the
learning rate is used as given (no automatic scaling); both are printed and recorded in resolved.json.
"""

import contextlib
import os

import torch
import torch.distributed as dist
from fastai.distributed import DistributedDL, DistributedTrainer


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init() -> bool:
    """Joins the process group when launched by torchrun/accelerate (WORLD_SIZE > 1). Returns whether it did."""
    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """`obj` from rank 0 on every rank (e.g. the run directory rank 0 created)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedDL(DistributedDL):
    """fastai's DistributedDL, with index broadcasts on gloo too and unpadded validation shards.

    fastai broadcasts the shuffled indices as a CUDA tensor (NCCL only) and pads every split to a multiple of
    the world size by repeating images; a repeated validation image would be counted twice in the confusion
    matrix. Here validation (an unshuffled loader) is split into disjoint contiguous shards.
    """

    def _broadcast(self, t, rank):
        t = torch.LongTensor(t)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.broadcast(t, rank)
        return t.cpu().tolist()

    def get_idxs(self):
        if self.dl.shuffle:
            return super().get_idxs()
        idxs = list(self.dl.get_idxs())
        self.n = self.n_padded = len(idxs)
        return idxs[self.rank * self.n // self.world_size : (self.rank + 1) * self.n // self.world_size]


class Trainer(DistributedTrainer):
    """fastai's DistributedTrainer (accelerate + DDP) with `ShardedDL` loaders."""

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else ShardedDL(dl, device=self.learn.model.device)


@contextlib.contextmanager
def distributed(learn):
    """Trains `learn` data-parallel while inside, when the process was launched as one of several."""
    if not active():
        yield learn
        return
    from fastai.callback.progress import ProgressCallback

    cuda = torch.cuda.is_available()
    trainer = Trainer(sync_bn=cuda, cpu=not cuda)  # SyncBatchNorm needs CUDA
    learn.add_cb(trainer)
    progress = [cb for cb in learn.cbs if isinstance(cb, ProgressCallback)] if not is_main() else []
    learn.remove_cbs(progress)
    try:
        yield learn
    finally:
        learn.remove_cb(trainer)
        learn.add_cbs(progress)


def launch_command(nprocs: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs `trash <argv>` in `nprocs` processes on this machine."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nprocs}",
        "-m",
        "app",
        *argv,
    ]
