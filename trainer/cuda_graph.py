"""The whole training step as one CUDA graph (cuda_graph=auto, on one CUDA GPU): train.py's train_step
(forward, backward, clipping, the optimizers' update) recorded once and replayed every step, so the
host launches one graph instead of every kernel from Python, which at the GPU default's size is what
a step waits on. Skip it on a first reading: it changes how fast a step runs, not what it computes."""
from __future__ import annotations

from collections.abc import Callable

import torch

from common.device import on_side_stream, record_cuda_graph, to_device

WARMUP_STEPS = 3  # eager steps first: the optimizers' state exists and torch.compile has compiled before recording
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # train_step's loss, gradient norm, non-finite flag


class GraphedTrainStep:
    """step(x, y) -> train_step's outputs: eager for WARMUP_STEPS steps, then replayed from one recording.
    A replay reads the batch from the buffers it was recorded with (each batch is copied in) and the learning
    rate from one tensor per param group (filled from the float train.py sets every step); its outputs are
    copied out, as the next replay overwrites them and train.py keeps them until log time."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], Outputs], optimizers: list[torch.optim.Optimizer],
                 device: torch.device):
        self.step, self.optimizers, self.device = step, optimizers, device
        # float32: CUDA's fused AdamW reads a tensor rate through a float pointer (eager's float is a double;
        # the two differ by float32's rounding of the rate, a relative 6e-8)
        self.lrs = [torch.zeros((), dtype=torch.float32, device=device) for _ in self.groups()]
        self.steps = 0
        self.side = torch.cuda.Stream()  # one for every eager step, whose memory the next one reuses
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Outputs:
        x, y = to_device(x, self.device), to_device(y, self.device)
        for lr, group in zip(self.lrs, self.groups()):
            lr.fill_(group["lr"])
        self.steps += 1
        if self.steps == WARMUP_STEPS + 1:
            self.record(x, y)
        if self.graph is None:  # a warm-up step, or every step when the recording failed
            return on_side_stream(lambda: self.step(x, y), self.side)
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)

    def groups(self) -> list[dict]:
        """The param groups as they are now: resuming loads new ones (Optimizer.load_state_dict)."""
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def record(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step into self.graph; where the GPU or torch refuses, say so once and leave it None."""
        self.x, self.y = x.clone(), y.clone()  # the graph's input buffers
        floats = [(group["lr"], group.get("capturable")) for group in self.groups()]
        for lr, group in zip(self.lrs, self.groups()):
            group["lr"] = lr  # the recorded update reads the rate from this tensor
            if "capturable" in group:  # torch's AdamW refuses to be recorded otherwise
                group["capturable"] = True
        try:
            recorded = record_cuda_graph(lambda: self.step(self.x, self.y), "the training step")
        finally:  # floats again for the checkpoint, which must load anywhere
            for group, (lr, capturable) in zip(self.groups(), floats):
                group["lr"] = lr
                if capturable is not None:
                    group["capturable"] = capturable
        if recorded is None:
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)  # the recording's gradients were never computed
        else:
            self.graph, self.outputs = recorded
