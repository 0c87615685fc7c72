"""Unusual but legal kernel and mixer inputs: the right result or a clear error, never NaN or a raw error.

- a log gate of ``-inf`` (a forget gate of exactly 0) in gated linear attention;
- an empty batch and zero channels (``B = 0``, ``D = 0``);
- fp16 / bf16 / fp64 input to fp32 mixers (cast) and integer input (refused).
The oracles are the loop references and the same mixer run on the cast input.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from omniseq.backbones.hierarchical import WindowedMixer  # noqa: F401 - registers the "windowed" mixer
from omniseq.backbones.mixers import build_mixer, list_mixers
from omniseq.kernels import (
    attention,
    fft_conv,
    fft_conv_reference,
    gated_linear_attention,
    gated_linear_attention_reference,
    linear_scan,
    linear_scan_reference,
    selective_scan,
    selective_scan_reference,
    window_merge,
    window_partition,
)
from tests.conftest import REPO_ROOT


def gla_inputs(dtype: torch.dtype, L: int = 70, B: int = 2, H: int = 2, K: int = 4, V: int = 3):
    q, k, v = (torch.randn(B, L, H, d, dtype=dtype, requires_grad=True) for d in (K, K, V))
    g = F.logsigmoid(torch.randn(B, L, H, K, dtype=dtype))
    g[:, L // 3, 0] = float("-inf")  # a whole head forgets at once
    g[1, L // 2, :, 1] = float("-inf")  # one channel forgets
    g[0, -1] = float("-inf")
    return q, k, v, g.requires_grad_(True), torch.randn(B, H, K, V, dtype=dtype)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize(("L", "chunk_size"), [(70, 64), (37, 16), (8, 64)])
@pytest.mark.parametrize("reverse", [False, True])
def test_gla_gate_of_zero_matches_the_loop_reference(dtype, tol, L, chunk_size, reverse):
    q, k, v, g, h0 = gla_inputs(dtype, L)
    o, state = gated_linear_attention(q, k, v, g, initial_state=h0, reverse=reverse, chunk_size=chunk_size,
                                      backend="torch")
    o_ref, state_ref = gated_linear_attention_reference(q, k, v, g, initial_state=h0, reverse=reverse)
    assert torch.isfinite(o).all() and torch.isfinite(state).all()
    torch.testing.assert_close(o, o_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(state, state_ref, rtol=tol, atol=tol)
    grads = torch.autograd.grad((o * o).sum() + state.sum(), (q, k, v, g))
    grads_ref = torch.autograd.grad((o_ref * o_ref).sum() + state_ref.sum(), (q, k, v, g))
    for got, want in zip(grads, grads_ref, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=tol * 10, atol=tol * 10)


def test_gla_gate_of_zero_in_the_triton_kernel_under_the_interpreter():
    pytest.importorskip("triton")
    # Triton reads TRITON_INTERPRET when imported, so the check runs in a fresh process.
    script = (
        "import torch, torch.nn.functional as F\n"
        "from omniseq.kernels import gated_linear_attention_reference as ref\n"
        "from omniseq.kernels.triton.gla import gated_linear_attention_triton as tri\n"
        "torch.manual_seed(0)\n"
        "q, k, v = (torch.randn(1, 20, 1, 16) for _ in range(3))\n"
        "g = F.logsigmoid(torch.randn(1, 20, 1, 16)); g[:, 5] = float('-inf'); g[:, 11, :, 3] = float('-inf')\n"
        "o, s = tri(q, k, v, g); o_ref, s_ref = ref(q, k, v, g)\n"
        "assert torch.isfinite(o).all(), 'NaN'\n"
        "torch.testing.assert_close(o, o_ref, rtol=1e-3, atol=1e-3)\n"
        "torch.testing.assert_close(s, s_ref, rtol=1e-3, atol=1e-3)\n"
        "print('triton-ok')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "triton-ok" in result.stdout, result.stderr[-3000:]


# -- empty batch, zero channels -----------------------------------------------------------------


def kernel_cases(B: int, D: int) -> dict:
    L, H, N = 8, 2, 4
    r = torch.randn
    return {
        "attention": (lambda: attention(r(B, L, H, D), r(B, L, H, D), r(B, L, H, D)),
                      lambda: torch.zeros(B, L, H, D)),
        "gla": (lambda: gated_linear_attention(r(B, L, H, D), r(B, L, H, D), r(B, L, H, D), -torch.rand(B, L, H, D))[0],
                lambda: torch.zeros(B, L, H, D)),
        "gla_reference": (lambda: gated_linear_attention_reference(r(B, L, H, D), r(B, L, H, D), r(B, L, H, D),
                                                                   -torch.rand(B, L, H, D))[0],
                          lambda: torch.zeros(B, L, H, D)),
        "linear_scan": (lambda: linear_scan(torch.rand(B, L, D), r(B, L, D)),
                        lambda: linear_scan_reference(torch.rand(B, L, D), r(B, L, D))),
        **{f"selective_scan[{backend}]": (
            lambda backend=backend: selective_scan(r(B, L, D), torch.rand(B, L, D), -torch.rand(D, N), r(B, L, N),
                                                   r(B, L, N), D=r(D), backend=backend),
            lambda: selective_scan_reference(r(B, L, D), torch.rand(B, L, D), -torch.rand(D, N), r(B, L, N),
                                             r(B, L, N)))
           for backend in ("torch", "auto")},
        "fft_conv": (lambda: fft_conv(r(B, L, D), r(D, L)), lambda: fft_conv_reference(r(B, L, D), r(D, L))),
        "window_partition": (lambda: window_partition(r(B, 4, 4, D), (2, 2)), lambda: torch.zeros(B * 4, 4, D)),
    }


@pytest.mark.parametrize(("B", "D"), [(0, 4), (2, 0)], ids=["batch0", "channels0"])
@pytest.mark.parametrize("name", sorted(kernel_cases(0, 4)))
def test_empty_batch_or_channels_give_an_empty_result(name, B, D):
    run, expected = kernel_cases(B, D)[name]
    out = run()
    assert out.shape == expected().shape and out.numel() == 0


def test_window_partition_of_zero_channels_merges_back():
    x = torch.randn(3, 4, 6, 0)
    windows = window_partition(x, (2, 3), shift_size=(1, 1))
    assert windows.shape == (3 * 4, 6, 0)
    assert window_merge(windows, (2, 3), (4, 6), shift_size=(1, 1)).shape == x.shape


# -- dtypes -------------------------------------------------------------------------------------


def mixer(name: str) -> torch.nn.Module:
    options = {"seq_len": 16} if name == "mlp" else {"num_heads": 2}
    torch.manual_seed(0)
    return build_mixer(name, 8, **options).eval()


def run(module: torch.nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    return module(x, grid=(4, 4))  # the token grid, for the mixers that need one (L = 16)


MIXERS = sorted(list_mixers())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", MIXERS)
def test_other_float_dtypes_are_cast_to_the_mixer_and_back(name, dtype):
    module = mixer(name)
    x = torch.randn(2, 16, 8).to(dtype)
    with torch.no_grad():
        y = run(module, x, name)
        expected = run(module, x.float(), name).to(dtype)
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name", MIXERS)
def test_integer_input_is_refused_with_what_to_do(name, dtype):
    x = torch.ones(2, 16, 8, dtype=dtype)
    with pytest.raises(TypeError, match=rf"expects a floating point x, got {dtype}; convert it with x\.float\(\)"):
        run(mixer(name), x, name)


@pytest.mark.parametrize("name", MIXERS)
def test_an_empty_batch_mixes_to_an_empty_batch(name):
    x = torch.randn(0, 16, 8, requires_grad=True)
    y = run(mixer(name), x, name)
    assert y.shape == (0, 16, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
