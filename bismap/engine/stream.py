"""An endless, resumable stream of shuffled batches for iteration-based training.

Why not a plain DataLoader: training counts iterations, not epochs, and a killed job must
continue with exactly the batch it would have drawn next. The order of epoch `e` is a
permutation drawn from a torch.Generator seeded by (seed, e), and the stream remembers
(epoch, position), so `load_state_dict` rebuilds the same permutation and skips what was
consumed. Each sample index travels with its epoch, so datasets with `set_epoch` (whose
augmentation depends on it) see the right epoch even inside persistent worker processes.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bismap.io import InputError


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _EpochDataset(Dataset):
    """Receives (epoch, index) keys; sets the wrapped dataset's epoch and, in worker processes,
    reseeds python/numpy/torch from (seed, epoch, worker) at each new epoch."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self.epoch:
            self.epoch = epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            info = torch.utils.data.get_worker_info()
            if info is not None:
                _seed_worker_rngs(self.seed, epoch, info.id)
        return self.dataset[index]


def _seed_worker_rngs(seed: int, epoch: int, worker: int) -> None:
    s = mix_seed(seed, epoch, worker)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def _worker_init(worker_id: int) -> None:
    """Workers start from a fixed state; _EpochDataset reseeds them per (seed, epoch, worker)."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    _seed_worker_rngs(dataset.seed, -1, worker_id)


class _EpochBatchSampler:
    """Yields lists of (epoch, index) for the batches of one epoch from `start` on."""

    def __init__(self, stream: "InfiniteStream"):
        self.stream = stream

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # Built eagerly: epoch and position are read when the loader starts a pass, not later.
        s = self.stream
        batches = s.epoch_batches(s.epoch)
        return iter([[(s.epoch, i) for i in batch] for batch in batches[s.position:]])

    def __len__(self) -> int:
        return self.stream.batches_per_epoch - self.stream.position


class InfiniteStream:
    """Iterator of collated batches over endless shuffled epochs; exact resume via state_dict().

    `batch_size` is the global batch. Under DDP (or with explicit rank/world_size) every rank draws
    the same epoch permutation and takes its own interleaved slice of it, `batch_size / world` samples
    per batch, so batch b of all ranks together holds exactly the samples of one process's batch b
    (train.batch_size and the LR schedule keep their meaning with any number of GPUs), and
    (epoch, position) mean the same thing whatever the world size: a resume file written by N
    processes continues with M.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, workers: int = 0, drop_last: bool = True, *,
                 persistent_workers: bool = True, pin_memory: bool | None = None, prefetch_factor: int = 2,
                 rank: int | None = None, world_size: int | None = None, collate_fn=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._rank_arg, self._world_arg = rank, world_size
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.workers = int(workers)
        self.drop_last = bool(drop_last)
        self._layout_for(0, 1 if world_size is None else int(world_size))  # fail early on a tiny dataset
        self._resolved = False
        self.epoch = 0
        self.position = 0
        self._wrapped = _EpochDataset(dataset, self.seed)
        kwargs: dict[str, Any] = {}
        if self.workers > 0:
            kwargs.update(persistent_workers=bool(persistent_workers), prefetch_factor=int(prefetch_factor),
                          worker_init_fn=_worker_init)
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        # A private generator: starting a pass must not consume the global torch RNG, or a
        # resumed run (which starts an extra pass) would diverge from an uninterrupted one.
        self._loader_generator = torch.Generator()
        self._loader_generator.manual_seed(mix_seed(self.seed, 7))
        self._loader = DataLoader(self._wrapped, batch_sampler=_EpochBatchSampler(self), num_workers=self.workers,
                                  pin_memory=bool(pin_memory), collate_fn=collate_fn,
                                  generator=self._loader_generator, **kwargs)
        self._it: Iterator | None = None

    def _layout_for(self, rank: int, world: int) -> None:
        self.rank, self.world_size = rank, world
        where = getattr(self.dataset, "root", None) or type(self.dataset).__name__
        if self.batch_size % world:
            raise InputError(f"{where}: a batch of {self.batch_size} cannot be split evenly over {world} "
                             f"processes; make train.batch_size a multiple of the number of GPUs")
        self.rank_batch_size = self.batch_size // world
        n = len(self.dataset)
        if self.drop_last:
            self.batches_per_epoch = n // self.batch_size
        else:
            self.batches_per_epoch = -(-n // self.batch_size)
        if self.batches_per_epoch < 1:
            raise InputError(f"{where}: {n} samples cannot fill one batch of {self.batch_size}; "
                             f"lower train.batch_size")

    def _resolve(self) -> None:
        """Rank and world size are read at first use, so a stream built before the trainer joins
        the process group (init_distributed in fit) still takes its own slice."""
        if self._resolved:
            return
        r, w = _dist_rank_world()
        self._layout_for(r if self._rank_arg is None else int(self._rank_arg),
                         w if self._world_arg is None else int(self._world_arg))
        self._resolved = True

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`: global batch b is perm[b*B:(b+1)*B] of a seeded
        permutation, and this rank takes every world-th sample of it."""
        self._resolve()
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch))
        perm = torch.randperm(len(self.dataset), generator=g)[: self.batches_per_epoch * self.batch_size]
        return [b[self.rank::self.world_size].tolist() for b in perm.split(self.batch_size)]

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's sample order for `epoch` (its batches, concatenated)."""
        return [i for b in self.epoch_batches(epoch) for i in b]

    def __iter__(self) -> "InfiniteStream":
        return self

    def __next__(self) -> Any:
        self._resolve()
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._it = None
        if self._it is None:
            if self.workers == 0 and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self._it = iter(self._loader)
        batch = next(self._it)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        """Where the stream is: the next batch is batch `position` of epoch `epoch`."""
        self._resolve()
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "num_samples": len(self.dataset), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the exact next batch; refuses a state from a different data setup."""
        self._resolve()
        for key in ("seed", "batch_size", "num_samples"):  # the world size may differ (see the class)
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"stream state has {key}={state[key]}, this stream has {mine}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._it = None  # a persistent loader simply starts a new pass from the restored position

    def close(self) -> None:
        """Stop worker processes now (they otherwise live until the stream is garbage collected)."""
        self._it = None
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None
