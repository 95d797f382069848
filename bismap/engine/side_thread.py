"""A second CPU thread for the parts of a training step that do not depend on each other.

Self-training and distillation run several forward passes per step (source, target, strong view)
whose losses meet only in the parameters' gradients, plus a teacher's no-grad forward. With one
intra-op thread the student's forwards stay in order on the main thread (batch-norm running
statistics and dropout's random numbers are consumed in the same order), while a side thread runs
the teacher's forward and the backward pass of each finished branch, and the main thread runs the
last branch's backward itself. torch kernels release the GIL, so this uses a second core.

The stage never sees this: it describes its step as a `Step` (engine.step_context: teacher forwards,
then loss terms) and `run_step` decides where each part runs. The numbers are the same bit for bit
as one backward of the summed losses: every term's gradient is computed by the very kernels that
computed it before, and the terms are summed per parameter in the order autograd's engine
accumulates them in that single backward, the last term first (tests/test_side_thread.py checks
both stages against the single backward). A second intra-op thread would not be: it splits the
convolution reductions differently (6 SGD steps of the default model with 2 threads instead of 1
change 147 of its 176 tensors).

On a GPU the kernels are asynchronous already, so the side thread is used on the CPU only.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from bismap.engine.step_context import Step, StepContext


def _done(fn: Callable[[], Any]) -> Future:
    future: Future = Future()
    future.set_result(fn())
    return future


class SideThread:
    """One background thread for teacher forwards and branch backwards; `enabled=False` runs the
    forwards inline and leaves the backward to the trainer's single pass."""

    def __init__(self, enabled: bool) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bismap-side") if enabled else None

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    def forward(self, model: torch.nn.Module, image: torch.Tensor, autocast: Callable[[], ContextManager],
                mode: Callable[[torch.nn.Module], ContextManager] | None = None) -> "Future[Any]":
        """Start `model(image)` under no_grad and `autocast()` (both thread-local, so entered in the
        thread that runs it) and, when given, `mode(model)`; `.result()` returns what model returns."""
        def work() -> Any:
            with torch.no_grad(), autocast():
                if mode is None:
                    return model(image)
                with mode(model):
                    return model(image)

        return self._pool.submit(work) if self._pool is not None else _done(work)

    def gradients(self, losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> "Future[tuple]":
        """Start the backward pass of one branch's losses: their gradients w.r.t. `params`."""
        if self._pool is None:
            raise RuntimeError("SideThread.gradients needs an enabled side thread")
        return self._pool.submit(torch.autograd.grad, list(losses), list(params), allow_unused=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Results(Mapping):
    """Teacher outputs by name; reading one waits for its forward."""

    def __init__(self, pending: Mapping[str, Future]) -> None:
        self._pending = pending

    def __getitem__(self, name: str) -> Any:
        return self._pending[name].result()

    def __iter__(self):
        return iter(self._pending)

    def __len__(self) -> int:
        return len(self._pending)


def run_step(step: "Step", ctx: "StepContext", side: SideThread, params: Sequence[torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], "Branches | None"]:
    """Run `step`: its teachers' forwards (on the side thread when enabled), then its terms in order on
    this thread, each finished term's backward started on the side thread when there are several.
    Returns the losses and the Branches (None: the caller does one backward of the summed losses)."""
    pending = {}
    for name, spec in step.teachers.items():
        model, image, mode = spec(ctx)
        pending[name] = side.forward(model, image, ctx.autocast, mode)
    ctx.teachers = _Results(pending)
    branches = Branches(side, params) if side.enabled and len(step.terms) > 1 else None
    losses: dict[str, torch.Tensor] = {}
    for term in step.terms:
        out = dict(term(ctx))
        if set(out) & set(losses):
            raise ValueError(f"loss terms return the same loss name twice: {sorted(set(out) & set(losses))}")
        losses.update(out)
        if branches is not None:
            branches.add(list(out.values()))
    return losses, branches


class Branches:
    """One backward per loss term (`run_step`), started on the side thread."""

    def __init__(self, side: SideThread, params: Sequence[torch.Tensor]) -> None:
        self.side = side
        self.params = params  # the trainable parameters, listed once per run by the trainer
        self.losses: list[list[torch.Tensor]] = []
        self.pending: list[Future] = []

    def add(self, losses: Sequence[torch.Tensor]) -> None:
        self.losses.append(list(losses))
        self.pending.append(self.side.gradients(losses, self.params))

    def check_cover(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Every loss in exactly one branch: a loss left out would silently drop its gradient."""
        declared = [id(t) for branch in self.losses for t in branch]
        missing = [k for k, v in losses.items() if id(v) not in declared]
        if missing or len(declared) != len(set(declared)) or len(declared) != len(losses):
            raise ValueError(f"loss_fn declared branches that do not cover each loss exactly once "
                             f"(not in a branch: {missing})")

    def set_grads(self, losses: Mapping[str, torch.Tensor]) -> None:
        """`param.grad` of every parameter from the branches, as one backward of the summed losses sets it."""
        self.check_cover(losses)
        for p, g in zip(self.params, self.gradients()):
            p.grad = g

    def gradients(self) -> list[torch.Tensor | None]:
        """Per parameter, the branches' gradients summed last branch first (autograd's order); a
        branch the side thread has not started yet runs here, on the calling thread."""
        inline: dict[int, tuple] = {}
        for i in reversed(range(len(self.pending))):  # the side thread works first to last
            if self.pending[i].cancel():
                inline[i] = torch.autograd.grad(self.losses[i], self.params, allow_unused=True)
        results = [inline[i] if i in inline else f.result() for i, f in enumerate(self.pending)]
        total: list[torch.Tensor | None] = list(results[-1])
        for branch in reversed(results[:-1]):
            total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, branch)]
        return total

