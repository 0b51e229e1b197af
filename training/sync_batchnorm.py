"""BatchNorm over the global batch of all ranks: torch.nn.SyncBatchNorm on CUDA, SyncBatchNorm2d on CPU/gloo
(where torch.nn.SyncBatchNorm refuses to run). README, Multi-GPU training."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: y = Σ_r x_r on every rank, so dL/dx_r = Σ_r' dL_r'/dy (all-reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over the global batch of all ranks, for CPU/gloo, where
    torch.nn.SyncBatchNorm refuses to run. Sums are all-reduced differentiably, giving exactly the forward and
    backward of one BatchNorm over the concatenated batch. In eval mode or one process: plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 or more
        dims, shape, f64 = (0, 2, 3), (1, -1, 1, 1), torch.float64
        count = torch.tensor([x.numel() // x.shape[1]], dtype=f64, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims, dtype=f64), count]))  # C sums, then N
        n = sums[-1]
        if n <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got {int(n)}")
        mean = (sums[:-1] / n).to(xf.dtype)
        centered = xf - mean.view(shape)
        var = (_AllReduceSum.apply((centered * centered).sum(dims, dtype=f64)) / n).to(xf.dtype)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * (n / (n - 1)).to(xf.dtype))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """Same rule as BatchNorm: exponential average, or cumulative average when momentum is None."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def convert_sync_batchnorm(model: nn.Module, device: str) -> nn.Module:
    """Swap BatchNorm2d layers for synchronized ones sharing their parameters and buffers (in place).

    CUDA: torch.nn.SyncBatchNorm (fused kernels). CPU: SyncBatchNorm2d. State-dict keys are unchanged.
    """
    if device == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(sync, key, value)
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
