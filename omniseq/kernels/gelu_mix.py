"""``Dropout(Conv1x1(GELU(v)))`` as one autograd op that keeps only ``v`` and a 1-byte mask.

The composed modules keep three full-size tensors per call for backward: GELU's input,
the 1x1 convolution's input (GELU's output) and dropout's mask as floats. This op keeps
``v`` and the mask as booleans and recomputes ``GELU(v)`` in backward (one elementwise
pass). The mask comes from one 16-bit uniform integer per element (:func:`keep_mask`):
on the CPU that is several times faster than ``bernoulli_``, which draws a full random
number per element, so it is a different random stream from ``torch.nn.functional.dropout``
with the same keep probability (to within 2^-17); the kept values are scaled by the float
``1 / (1 - p)`` rounded to the output's dtype, as dropout scales them.
Under autocast with ``v`` already in the autocast dtype (bf16 frames from ConvS5's scan) the
op runs as autocast runs the composed form: GELU and the convolution in that dtype.

:func:`gelu_mix_dropout_reference` (the modules' functional composition) is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["gelu_mix_dropout", "gelu_mix_dropout_reference", "keep_mask"]


def keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A Bernoulli(1 - p) bool mask shaped and laid out like ``like``: element i is kept when
    the i-th 16-bit half of uniform int32 draws is below ``round((1 - p) 2^16) - 2^15``."""
    count = like.numel()
    words = torch.randint(-2**31, 2**31, ((count + 1) // 2,), dtype=torch.int32, device=like.device)
    keep = torch.empty_like(like, dtype=torch.bool)  # dense, in like's memory order
    threshold = round((1 - p) * 65536) - 32768
    torch.lt(words.view(torch.int16)[:count], threshold, out=keep.as_strided((count,), (1,)))
    return keep


class _GeluMixDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, weight, bias, p):  # type: ignore[override]
        # The convolution in v's dtype (bf16 under autocast, as autocast would run it); the
        # parameters' gradients come back in their own dtype.
        ctx.param_dtype = weight.dtype
        weight, bias = weight.to(v.dtype), None if bias is None else bias.to(v.dtype)
        out = F.conv2d(F.gelu(v), weight, bias)
        keep = None
        if p > 0:
            keep = keep_mask(out, p)
            scale = torch.ones((), dtype=out.dtype, device=out.device).div_(1 - p)
            # zeroing, not multiplying by the mask, casts no mask to out's dtype
            out.masked_fill_(keep.logical_not(), 0).mul_(scale)
            ctx.scale = scale
        ctx.save_for_backward(v, weight, keep)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        v, weight, keep = ctx.saved_tensors
        if keep is not None:  # selecting by the mask, not multiplying by it, casts no mask (and,
            # unlike masked_fill, keeps a channels-last gradient channels-last)
            grad_out = torch.where(keep, grad_out, grad_out.new_zeros(())).mul_(ctx.scale)
        needs = ctx.needs_input_grad
        grad_g, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out.to(v.dtype), F.gelu(v), weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [0, 0], [1, 1],
            False, [0, 0], 1, [needs[0], needs[1], needs[2] and ctx.has_bias])
        del grad_out
        if grad_g is not None:  # in place: one full-size temporary fewer at the peak of backward
            torch.ops.aten.gelu_backward.grad_input(grad_g, v, grad_input=grad_g)
        grad_w, grad_b = (None if g is None else g.to(ctx.param_dtype) for g in (grad_w, grad_b))
        return grad_g, grad_w, grad_b, None


def gelu_mix_dropout(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
                     training: bool) -> torch.Tensor:
    """``dropout(conv2d(gelu(v), weight, bias), p, training)`` for a 1x1 ``weight``; see the module docstring."""
    if weight.dim() != 4 or weight.shape[-2:] != (1, 1):
        raise ValueError(f"gelu_mix_dropout: weight must be a 1x1 kernel (C_out, C_in, 1, 1), got {tuple(weight.shape)}")
    if not 0 <= p < 1:
        raise ValueError(f"gelu_mix_dropout: dropout p must be in [0, 1), got {p}")
    if not torch.is_grad_enabled():
        return gelu_mix_dropout_reference(v, weight, bias, p, training)
    device = v.device.type
    if torch.is_autocast_enabled(device):
        if v.dtype != torch.get_autocast_dtype(device):  # (fp32 v: autocast's GELU would run in fp32)
            return gelu_mix_dropout_reference(v, weight, bias, p, training)
        # v already in the autocast dtype: the composed form would run GELU and the convolution in
        # it, which is what the op does with the weights cast, so it keeps its small saved state.
        with torch.autocast(device, enabled=False):
            return _GeluMixDropoutFn.apply(v, weight, bias, p if training else 0.0)
    return _GeluMixDropoutFn.apply(v, weight, bias, p if training else 0.0)


def gelu_mix_dropout_reference(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
                               training: bool) -> torch.Tensor:
    """The composed functional form, with ``F.dropout``'s own mask: the path without autograd
    or under autocast with ``v`` in another dtype, and (with the op's mask) the tests' oracle."""
    return F.dropout(F.conv2d(F.gelu(v), weight, bias), p, training)
