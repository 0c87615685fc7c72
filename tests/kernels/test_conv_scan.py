"""conv_scan (ConvS5's B convolution, in-place plane scan and C readout as one op) against a loop."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.conv_scan import conv_scan, conv_scan_reference
from omniseq.kernels.cpu import cpu_kernels_available


def _backend(name: str) -> str:
    """``"cpu"`` (the compiled plane scan) is skipped, saying why, where it cannot be built."""
    if name == "cpu" and not cpu_kernels_available("plane_scan"):
        pytest.skip("the compiled plane scan does not build here (no C compiler?)")
    return name


def _inputs(dtype=torch.float64, length=5, batch=2, u_dim=3, p=4, out_dim=2, size=(4, 5), k=3, h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    u = torch.randn(length * batch, u_dim, *size, generator=gen, dtype=dtype)
    b_kernel = torch.randn(2 * p, u_dim, k, k, generator=gen, dtype=dtype) / k
    radius = torch.rand(p, generator=gen, dtype=dtype) * 0.9 + 0.05
    a = torch.polar(radius, torch.rand(p, generator=gen, dtype=dtype) * 6.28).to(cplx)
    c_kernel = torch.randn(out_dim, 2 * p, k, k, generator=gen, dtype=dtype) / k
    state = torch.randn(batch, *size, p, generator=gen, dtype=cplx) if h0 else None
    return u, b_kernel, a, c_kernel, state


@pytest.mark.parametrize("dtype, tol, backend", [(torch.float64, 1e-10, "auto"), (torch.float32, 2e-5, "torch"),
                                                 (torch.float32, 2e-5, "cpu")])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("chunk, recompute", [(None, False), (1, False), (3, False), (1, True), (3, True)])
def test_values_and_gradients_match_the_loop(dtype, tol, backend, with_h0, last_only, length, chunk, recompute):
    """fp64 (PyTorch scans), and fp32 with the PyTorch scans and with the compiled ones."""
    inputs = _inputs(dtype, length=length, h0=with_h0, seed=length)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    refs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y, last = conv_scan(*leaves[:4], length, leaves[4], last_only=last_only, chunk=chunk, recompute=recompute,
                        backend=_backend(backend))
    y_ref, last_ref = conv_scan_reference(*refs[:4], length, refs[4], last_only=last_only)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, last_ref, rtol=tol, atol=tol)
    gen = torch.Generator().manual_seed(1)
    weight_y = torch.randn(y.shape, generator=gen, dtype=dtype)
    weight_last = torch.randn(last.shape, generator=gen, dtype=last.dtype)
    ((y * weight_y).sum() + (last * weight_last).real.sum()).backward()
    ((y_ref * weight_y).sum() + (last_ref * weight_last).real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        if got is not None:  # (with one frame and no h0 the loop never touches a: no gradient)
            expected = torch.zeros_like(want) if want.grad is None else want.grad
            torch.testing.assert_close(got.grad, expected, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_gradients_from_one_output_only(last_only, recompute):
    """Only y, or only the last state, reaches the loss (the other gradient is None)."""
    for pick in (0, 1):
        inputs = _inputs(length=4, seed=3)
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        refs = [t.detach().clone().requires_grad_() for t in inputs]
        out = conv_scan(*leaves[:4], 4, leaves[4], last_only=last_only, chunk=3, recompute=recompute)[pick]
        ref = conv_scan_reference(*refs[:4], 4, refs[4], last_only=last_only)[pick]
        (out.abs().square().sum()).backward()
        (ref.abs().square().sum()).backward()
        for got, want in zip(leaves, refs, strict=True):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-10)


def test_gradcheck():
    u, b_kernel, a, c_kernel, h0 = _inputs(length=3, batch=1, u_dim=2, p=2, out_dim=1, size=(2, 3))
    for last_only, recompute in ((False, False), (True, False), (False, True)):
        assert torch.autograd.gradcheck(
            lambda *t, last_only=last_only, recompute=recompute: conv_scan(
                *t[:4], 3, t[4], last_only=last_only, chunk=2, recompute=recompute),
            tuple(t.detach().clone().requires_grad_() for t in (u, b_kernel, a, c_kernel, h0)))


def test_half_precision_is_computed_in_fp32_and_the_inputs_are_not_modified():
    u, b_kernel, a, c_kernel, h0 = _inputs(torch.float32, length=4)
    kept = u.clone()
    y, _ = conv_scan(u.bfloat16(), b_kernel, a, c_kernel, 4, h0)
    y_ref, _ = conv_scan_reference(u.bfloat16().float(), b_kernel, a, c_kernel, 4, h0)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    conv_scan(u, b_kernel, a, c_kernel, 4, h0)
    torch.testing.assert_close(u, kept, rtol=0, atol=0)


def test_bad_shapes_raise_clear_errors():
    u, b_kernel, a, c_kernel, h0 = _inputs(length=3)
    with pytest.raises(ValueError, match=r"u must be \(L\*B, U, H, W\) frames with L = 4"):
        conv_scan(u, b_kernel, a, c_kernel, 4)
    with pytest.raises(ValueError, match="a must be complex"):
        conv_scan(u, b_kernel, a.real, c_kernel, 3)
    with pytest.raises(ValueError, match=r"b_kernel must be \(2P, U, k, k\)"):
        conv_scan(u, b_kernel[:-1], a, c_kernel, 3)
    with pytest.raises(ValueError, match=r"c_kernel must be \(U_out, 2P, k, k\)"):
        conv_scan(u, b_kernel, a, c_kernel[:, :-1], 3)
    with pytest.raises(ValueError, match=r"h0 must be \(B, H, W, P\)"):
        conv_scan(u, b_kernel, a, c_kernel, 3, h0[..., :-1])
    with pytest.raises(ValueError, match="chunk must be a positive number of time steps, got 0"):
        conv_scan(u, b_kernel, a, c_kernel, 3, chunk=0)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("last_only, recompute", [(False, False), (True, False), (False, True)])
def test_bf16_autocast_runs_the_convolutions_in_bf16_and_keeps_the_scan_in_fp32(last_only, recompute, backend):
    """Mixed precision: values and all gradients stay within bf16 rounding of the fp64 loop,
    the returned gradients are fp32, and the result really is the bf16 path (not fp32's);
    with the PyTorch scans and with the compiled ones (bf16 frames, fp32 recurrence)."""
    inputs = _inputs(torch.float32, length=6, batch=2, u_dim=8, p=8, out_dim=4, size=(6, 7), seed=5)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    refs = [t.detach().double().clone().requires_grad_() if not t.is_complex()
            else t.detach().to(torch.complex128).clone().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, last = conv_scan(*leaves[:4], 6, leaves[4], last_only=last_only, chunk=4, recompute=recompute,
                            backend=_backend(backend))
    y_fp32, _ = conv_scan(*[t.detach() for t in inputs[:4]], 6, inputs[4], last_only=last_only)
    y_ref, last_ref = conv_scan_reference(*refs[:4], 6, refs[4], last_only=last_only)
    assert y.dtype == torch.float32 and last.dtype == torch.complex64
    assert _relative_error(y, y_ref) < 1e-2 and _relative_error(torch.view_as_real(last),
                                                                 torch.view_as_real(last_ref)) < 1e-2
    assert _relative_error(y_fp32, y_ref) < 1e-5 < _relative_error(y, y_ref)  # bf16 rounding is visible
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ((y * weight.float()).sum() + last.real.sum()).backward()
    ((y_ref * weight).sum() + last_ref.real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        assert got.grad.dtype == got.dtype
        assert _relative_error(torch.view_as_real(got.grad) if got.is_complex() else got.grad,
                               torch.view_as_real(want.grad) if want.is_complex() else want.grad) < 2e-2


def test_conv_dtype_can_be_set_without_autocast_and_fp64_ignores_autocast():
    u, b_kernel, a, c_kernel, h0 = _inputs(torch.float32, length=3, u_dim=8, p=8, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto, _ = conv_scan(u, b_kernel, a, c_kernel, 3, h0)
    y_set, _ = conv_scan(u, b_kernel, a, c_kernel, 3, h0, conv_dtype=torch.bfloat16)
    torch.testing.assert_close(y_set, y_auto, rtol=0, atol=0)
    d = _inputs(torch.float64, length=3, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y64, _ = conv_scan(*d[:4], 3, d[4])
    torch.testing.assert_close(y64, conv_scan_reference(*d[:4], 3, d[4])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("chunk, recompute", [(None, False), (1, False), (3, False), (1, True), (3, True)])
def test_low_precision_path_matches_the_loop(with_h0, last_only, length, chunk, recompute):
    """The path that keeps states and their gradients in the convolutions' dtype and scans
    frame by frame in the working one (bf16 under autocast), run here as fp32 convolutions
    on fp64 inputs: every value and gradient within fp32 rounding of the fp64 loop, so a
    wrong index or a lost term shows far above the tolerance."""
    inputs = _inputs(torch.float64, length=length, h0=with_h0, seed=10 + length)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    refs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y, last = conv_scan(*leaves[:4], length, leaves[4], last_only=last_only, chunk=chunk, recompute=recompute,
                        conv_dtype=torch.float32)
    y_ref, last_ref = conv_scan_reference(*refs[:4], length, refs[4], last_only=last_only)
    assert y.dtype == torch.float64 and last.dtype == torch.complex128
    assert 1e-12 < _relative_error(y, y_ref) < 1e-5  # fp32 rounding is visible: the low path ran
    assert _relative_error(torch.view_as_real(last), torch.view_as_real(last_ref)) < 1e-5
    gen = torch.Generator().manual_seed(4)
    weight_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    weight_last = torch.randn(last.shape, generator=gen, dtype=torch.complex128)
    ((y * weight_y).sum() + (last * weight_last).real.sum()).backward()
    ((y_ref * weight_y).sum() + (last_ref * weight_last).real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        if got is None or want.grad is None:  # (one frame, no h0: the loop never touches a)
            continue
        assert got.grad.dtype == got.dtype
        real = (lambda t: torch.view_as_real(t)) if got.is_complex() else (lambda t: t)
        assert _relative_error(real(got.grad), real(want.grad)) < 1e-5


@pytest.mark.parametrize("dtype, tol, backend", [(torch.float64, 1e-10, "auto"), (torch.float32, 2e-5, "torch"),
                                                 (torch.float32, 2e-5, "cpu")])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("chunk, recompute", [(None, False), (2, False), (2, True)])
def test_skip_weights_d_match_the_loop(dtype, tol, backend, last_only, chunk, recompute):
    """``+ D u`` added in place: values and every gradient (D's and u's included) as the loop's."""
    u, b_kernel, a, c_kernel, h0 = _inputs(dtype, length=5, u_dim=3, out_dim=3, seed=21)
    d = torch.randn(3, generator=torch.Generator().manual_seed(22), dtype=dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (u, b_kernel, a, c_kernel, h0, d)]
    refs = [t.detach().clone().requires_grad_() for t in (u, b_kernel, a, c_kernel, h0, d)]
    y, last = conv_scan(*leaves[:4], 5, leaves[4], last_only=last_only, chunk=chunk, recompute=recompute,
                        backend=_backend(backend), d=leaves[5])
    y_ref, last_ref = conv_scan_reference(*refs[:4], 5, refs[4], last_only=last_only, d=refs[5])
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(23), dtype=dtype)
    ((y * weight).sum() + last.real.sum()).backward()
    ((y_ref * weight).sum() + last_ref.real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_skip_weights_need_one_per_channel():
    u, b_kernel, a, c_kernel, h0 = _inputs(length=2, u_dim=3, out_dim=2)
    with pytest.raises(ValueError, match="one skip weight per input channel"):
        conv_scan(u, b_kernel, a, c_kernel, 2, h0, d=torch.ones(3, dtype=u.dtype))
    c_square = torch.zeros(3, c_kernel.shape[1], 3, 3, dtype=u.dtype)
    with pytest.raises(ValueError, match="one skip weight per input channel"):
        conv_scan(u, b_kernel, a, c_square, 2, h0, d=torch.ones(2, dtype=u.dtype))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("last_only, recompute", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("with_norm", [False, True])
def test_bf16_frames_under_autocast_stay_bf16_with_the_skip(last_only, recompute, backend, with_norm):
    """bf16 frames in (what a model under bf16 autocast feeds): the readout comes out bf16
    without an fp32 round trip, u's gradient is bf16, and values and gradients (D's and the
    fused norm's too) stay within bf16 rounding of the fp64 loop."""
    u, b_kernel, a, c_kernel, h0 = _inputs(torch.float32, length=6, batch=2, u_dim=8, p=8, out_dim=8, size=(6, 7),
                                           seed=31)
    gen = torch.Generator().manual_seed(32)
    d, weight, bias = (torch.randn(8, generator=gen) for _ in range(3))
    u = (u * 2 + 1).bfloat16()
    tensors = (u, b_kernel, a, c_kernel, h0, d, weight, bias)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    refs = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64).requires_grad_() for t in tensors]
    if not with_norm:
        leaves, refs = leaves[:6], refs[:6]
    norm, norm_ref = ((leaves[6], leaves[7], 2, 1e-5), (refs[6], refs[7], 2, 1e-5)) if with_norm else (None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, last = conv_scan(*leaves[:4], 6, leaves[4], last_only=last_only, chunk=4, recompute=recompute,
                            backend=_backend(backend), d=leaves[5], norm=norm)
    y_ref, last_ref = conv_scan_reference(*refs[:4], 6, refs[4], last_only=last_only, d=refs[5], norm=norm_ref)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(y, y_ref) < 1e-2
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    ((y.float() * weight.float()).sum() + last.real.sum()).backward()
    ((y_ref * weight).sum() + last_ref.real.sum()).backward()
    assert leaves[0].grad.dtype == torch.bfloat16
    for got, want in zip(leaves, refs, strict=True):
        real = (lambda t: torch.view_as_real(t)) if got.is_complex() else (lambda t: t)
        assert _relative_error(real(got.grad), real(want.grad)) < 2e-2


@pytest.mark.parametrize("dtype, tol, backend", [(torch.float64, 1e-10, "auto"), (torch.float32, 2e-5, "torch"),
                                                 (torch.float32, 2e-5, "cpu")])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("chunk, recompute", [(None, False), (2, True)])
@pytest.mark.parametrize("groups", [1, 3])
def test_fused_group_norm_matches_the_loop_on_normalised_frames(dtype, tol, backend, last_only, chunk, recompute,
                                                                groups):
    """``norm``: the op normalises its input itself; values and every gradient (the norm's
    weight and bias, and u's through the norm) as the loop on ``group_norm(u)``."""
    u, b_kernel, a, c_kernel, h0 = _inputs(dtype, length=5, u_dim=6, out_dim=6, seed=41)
    gen = torch.Generator().manual_seed(42)
    d, weight, bias = (torch.randn(6, generator=gen, dtype=dtype) for _ in range(3))
    u = (u * 3 + 1).contiguous(memory_format=torch.channels_last)  # off zero mean and unit variance
    tensors = (u, b_kernel, a, c_kernel, h0, d, weight, bias)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    refs = [t.detach().clone().requires_grad_() for t in tensors]
    y, last = conv_scan(*leaves[:4], 5, leaves[4], last_only=last_only, chunk=chunk, recompute=recompute,
                        backend=_backend(backend), d=leaves[5], norm=(leaves[6], leaves[7], groups, 1e-5))
    y_ref, last_ref = conv_scan_reference(*refs[:4], 5, refs[4], last_only=last_only, d=refs[5],
                                          norm=(refs[6], refs[7], groups, 1e-5))
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, last_ref, rtol=tol, atol=tol)
    weight_y = torch.randn(y.shape, generator=gen, dtype=dtype)
    ((y * weight_y).sum() + last.real.sum()).backward()
    ((y_ref * weight_y).sum() + last_ref.real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_fused_group_norm_keeps_the_input_not_its_normalisation():
    u, b_kernel, a, c_kernel, h0 = _inputs(torch.float32, length=4, u_dim=6, out_dim=6, seed=43)
    u = u.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.ones(6, requires_grad=True), torch.zeros(6, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y, _ = conv_scan(u, b_kernel, a, c_kernel, 4, h0, d=torch.ones(6), norm=(weight, bias, 1, 1e-5))
    frames_sized = [t for t in saved if t.shape == u.shape]
    assert len(frames_sized) == 1 and frames_sized[0].data_ptr() == u.data_ptr()
    with pytest.raises(ValueError, match="norm must be"):
        conv_scan(u, b_kernel, a, c_kernel, 4, h0, norm=(weight, bias, 4, 1e-5))  # 4 groups of 6 channels
