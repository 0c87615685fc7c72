"""``Dropout(Conv1x1(GELU(v)))`` as one autograd op that keeps only ``v``.

The composed modules keep three full-size tensors per call for backward: GELU's input,
the 1x1 convolution's input (GELU's output) and dropout's mask as floats. This op keeps
``v``, recomputes ``GELU(v)`` in backward (one elementwise pass) and keeps no mask: the mask
is a counter-based random function of the element's index and a 64-bit key drawn from
torch's generator (:func:`keep_mask`), so backward draws it again from the key. On the CPU a
compiled kernel (:mod:`omniseq.kernels.cpu.dropout`) generates and applies it in one pass;
``bernoulli_`` and a bool mask cost five passes, one of them serial. It is a different random
stream from ``torch.nn.functional.dropout``, with the same keep probability to within 2^-17;
the kept values are scaled by the float ``1 / (1 - p)`` rounded to the output's dtype, as
dropout scales them.
Under autocast with ``v`` already in the autocast dtype (bf16 frames from ConvS5's scan) the
op runs as autocast runs the composed form: GELU and the convolution in that dtype.

:func:`gelu_mix_dropout_reference` (the modules' functional composition) is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from omniseq.kernels.cpu import dropout as cpu_dropout

__all__ = ["dropout_key", "gelu_mix_dropout", "gelu_mix_dropout_reference", "keep_mask", "philox_words"]


_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_LOW32 = 0xFFFFFFFF
_TILE_BLOCKS = 1024  # Philox blocks per tile of 8192 elements (4 words of 2 halves per block)


def dropout_key() -> tuple[int, int]:
    """A fresh 64-bit key (two 32-bit words) from torch's default generator: seeding torch
    (and restoring its state on resume) decides every mask."""
    low, high = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()
    return low, high


def _mulhilo(m: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``m * c`` (both < 2^32) in int64, without overflowing it."""
    a, b = m * (c & 0xFFFF), m * (c >> 16)  # m * c = a + b * 2^16, each term < 2^48
    low = a + ((b & 0xFFFF) << 16)
    return ((b >> 16) + (low >> 32)) & _LOW32, low & _LOW32


def philox_words(blocks: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 (Salmon et al. 2011) on the counters ``(block, 0, 0, 0)`` for int64
    ``blocks``: the four 32-bit words per block, ``(4, n)`` int64."""
    c0, c1 = blocks & _LOW32, blocks >> 32
    c2, c3 = torch.zeros_like(blocks), torch.zeros_like(blocks)
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & _LOW32, (k1 + _PHILOX_W[1]) & _LOW32
    return torch.stack([c0, c1, c2, c3])


def keep_threshold(p: float) -> int:
    return round((1 - p) * 65536)


def keep_mask(like: torch.Tensor, p: float, key: tuple[int, int]) -> torch.Tensor:
    """A Bernoulli(1 - p) bool mask shaped and laid out like ``like``, a function of ``key``
    and each element's position in memory: tile t of 8192 elements runs Philox4x32-10 on the
    counters ``t * 1024 + b``; its element ``r * 2048 + 2 b + h`` is kept when the 16-bit half
    ``h`` (0: low) of word ``r`` of block ``b`` is below ``round((1 - p) 2^16)``."""
    count = like.numel()
    tiles = -(-count // (8 * _TILE_BLOCKS))
    blocks = torch.arange(tiles * _TILE_BLOCKS, dtype=torch.int64, device=like.device)
    words = philox_words(blocks, key).view(4, tiles, _TILE_BLOCKS).transpose(0, 1)
    halves = torch.stack([words & 0xFFFF, words >> 16], dim=-1).flatten()[:count]
    keep = torch.empty_like(like, dtype=torch.bool)  # dense, in like's memory order
    torch.lt(halves, keep_threshold(p), out=keep.as_strided((count,), (1,)))
    return keep


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def _drop(x: torch.Tensor, key: tuple[int, int], p: float, scale: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``keep ? x * scale : 0`` with :func:`keep_mask`'s mask over ``x``'s memory order (x dense)."""
    out = x if in_place else torch.empty_like(x)
    if cpu_dropout.supports(x, _layout(x)):
        cpu_dropout.philox_dropout(x, out, key, keep_threshold(p), scale.item())
        return out
    dropped = keep_mask(x, p, key).logical_not_()
    # zeroing, not multiplying by the mask, casts no mask to x's dtype
    return torch.mul(x, scale, out=out).masked_fill_(dropped, 0)


class _GeluMixDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, weight, bias, p):  # type: ignore[override]
        # The convolution in v's dtype (bf16 under autocast, as autocast would run it); the
        # parameters' gradients come back in their own dtype.
        ctx.param_dtype = weight.dtype
        weight, bias = weight.to(v.dtype), None if bias is None else bias.to(v.dtype)
        out = F.conv2d(F.gelu(v), weight, bias)
        ctx.p, ctx.strides = p, out.stride()
        if p > 0:
            ctx.key, ctx.scale = dropout_key(), torch.ones((), dtype=out.dtype).div_(1 - p)
            _drop(out, ctx.key, p, ctx.scale, in_place=True)
        ctx.save_for_backward(v, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        v, weight = ctx.saved_tensors
        if ctx.p > 0:  # the forward's mask again, from its key, over the output's memory order
            if grad_out.stride() != ctx.strides:
                grad_out = torch.empty_strided(grad_out.shape, ctx.strides, dtype=grad_out.dtype,
                                               device=grad_out.device).copy_(grad_out)
            grad_out = _drop(grad_out, ctx.key, ctx.p, ctx.scale, in_place=False)
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
