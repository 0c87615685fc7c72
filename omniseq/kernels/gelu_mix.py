"""``Dropout(Conv1x1(GELU(v)))`` as one autograd op that keeps only ``v`` and a 1-byte mask.

The composed modules keep three full-size tensors per call for backward: GELU's input,
the 1x1 convolution's input (GELU's output) and dropout's mask as floats. This op keeps
``v`` and the mask as booleans and recomputes ``GELU(v)`` in backward (one elementwise
pass). The mask is drawn exactly as ``torch.nn.functional.dropout`` draws it on CPU and
GPU alike (``empty_like(x).bernoulli_(1 - p)``, the same random stream) and the kept values
are scaled by the same float ``1 / (1 - p)``, so outputs and training runs are unchanged.

:func:`gelu_mix_dropout_reference` (the modules' functional composition) is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["gelu_mix_dropout", "gelu_mix_dropout_reference"]


class _GeluMixDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, weight, bias, p):  # type: ignore[override]
        out = F.conv2d(F.gelu(v), weight, bias)
        keep = None
        if p > 0:
            noise = torch.empty_like(out).bernoulli_(1 - p)  # as F.dropout draws it
            keep = noise.bool()
            del noise
            scale = torch.ones((), dtype=out.dtype, device=out.device).div_(1 - p)
            out.mul_(keep).mul_(scale)
            ctx.scale = scale
        ctx.save_for_backward(v, weight, keep)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        v, weight, keep = ctx.saved_tensors
        if keep is not None:
            grad_out = (grad_out * keep).mul_(ctx.scale)
        needs = ctx.needs_input_grad
        grad_g, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, F.gelu(v), weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [0, 0], [1, 1],
            False, [0, 0], 1, [needs[0], needs[1], needs[2] and ctx.has_bias])
        del grad_out
        if grad_g is not None:  # in place: one full-size temporary fewer at the peak of backward
            torch.ops.aten.gelu_backward.grad_input(grad_g, v, grad_input=grad_g)
        return grad_g, grad_w, grad_b, None


def gelu_mix_dropout(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
                     training: bool) -> torch.Tensor:
    """``dropout(conv2d(gelu(v), weight, bias), p, training)`` for a 1x1 ``weight``; see the module docstring."""
    if weight.dim() != 4 or weight.shape[-2:] != (1, 1):
        raise ValueError(f"gelu_mix_dropout: weight must be a 1x1 kernel (C_out, C_in, 1, 1), got {tuple(weight.shape)}")
    if not 0 <= p < 1:
        raise ValueError(f"gelu_mix_dropout: dropout p must be in [0, 1), got {p}")
    if not torch.is_grad_enabled() or torch.is_autocast_enabled(v.device.type):
        return gelu_mix_dropout_reference(v, weight, bias, p, training)
    return _GeluMixDropoutFn.apply(v, weight, bias, p if training else 0.0)


def gelu_mix_dropout_reference(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
                               training: bool) -> torch.Tensor:
    """The composed functional form; the test oracle (and the path without autograd or under autocast)."""
    return F.dropout(F.conv2d(F.gelu(v), weight, bias), p, training)
