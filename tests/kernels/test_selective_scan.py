"""selective_scan (Mamba-1): the chunked PyTorch form and the compiled CPU kernel against the step loop."""

from __future__ import annotations

import contextlib
import importlib
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.kernels.cpu import cpu_kernels_available
from omniseq.kernels.selective_scan import selective_scan, selective_scan_reference

selective_scan_module = importlib.import_module("omniseq.kernels.selective_scan")

# "cpu" is the fused C kernel, built on first use; without a C compiler only PyTorch runs.
NEEDS_COMPILED = pytest.mark.skipif(
    not cpu_kernels_available("selective_scan"),
    reason="the compiled CPU selective scan did not build (no C compiler?)",
)
FAST_BACKENDS = ["torch", pytest.param("cpu", marks=NEEDS_COMPILED)]

# Regimes of A: the usual negative spectrum, near zero (decay ~ 1), strongly negative
# (decay ~ 0) and positive (growing states; the math must still agree).
A_REGIMES = ("negative", "near_zero", "strong", "positive")


@contextlib.contextmanager
def chunking(chunk: int, recompute: bool = False):
    module = selective_scan_module
    saved = (module._CHUNK, module._RECOMPUTE_ELEMENTS)
    module._CHUNK = chunk
    module._RECOMPUTE_ELEMENTS = 0 if recompute else 1 << 60
    try:
        yield
    finally:
        module._CHUNK, module._RECOMPUTE_ELEMENTS = saved


def make_inputs(batch, length, dim, nstate, regime, gen, dtype=torch.float64, **flags):
    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

    uniform = torch.rand(dim, nstate, generator=gen, dtype=torch.float64)
    A = {
        "negative": -(0.1 + 2 * uniform),
        "near_zero": -1e-4 * uniform,
        "strong": -(50 + 50 * uniform),
        "positive": 0.05 * uniform,
    }[regime].to(dtype)
    inputs = dict(
        u=randn(batch, length, dim),
        # Mostly positive like a real time step, with a few negative entries so that a
        # sign slip in dt cannot go unnoticed.
        delta=randn(batch, length, dim, scale=0.5).abs() - 0.02,
        A=A,
        B=randn(batch, length, nstate),
        C=randn(batch, length, nstate),
    )
    optional = dict(
        D=randn(dim),
        z=randn(batch, length, dim),
        delta_bias=randn(dim, scale=0.1),
        initial_state=randn(batch, dim, nstate),
    )
    inputs.update({k: v for k, v in optional.items() if flags.get(k, False)})
    return inputs


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    length=st.integers(1, 40),
    dim=st.integers(1, 5),
    nstate=st.integers(1, 4),
    regime=st.sampled_from(A_REGIMES),
    chunk=st.sampled_from([3, 7, 16, 128]),
    flags=st.fixed_dictionaries(
        {k: st.booleans() for k in ("D", "z", "delta_bias", "initial_state")}
    ),
    delta_softplus=st.booleans(),
    reverse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_matches_reference_float64(
    backend, batch, length, dim, nstate, regime, chunk, flags, delta_softplus, reverse, seed
):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(batch, length, dim, nstate, regime, gen, **flags)
    options = dict(delta_softplus=delta_softplus, reverse=reverse, return_last_state=True)
    y_ref, state_ref = selective_scan_reference(**inputs, **options)
    with chunking(chunk):
        y, state = selective_scan(**inputs, **options, backend=backend)
    assert y.shape == (batch, length, dim) and state.shape == (batch, dim, nstate)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(state, state_ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("regime", A_REGIMES)
@pytest.mark.parametrize("reverse", [False, True])
def test_float32_matches_float64_reference(regime, reverse, backend):
    gen = torch.Generator().manual_seed(0)
    flags = dict(D=True, z=True, delta_bias=True, initial_state=True)
    inputs = make_inputs(2, 150, 6, 4, regime, gen, **flags)
    expected = selective_scan_reference(**inputs, delta_softplus=True, reverse=reverse)
    got = selective_scan(
        **{k: v.float() for k, v in inputs.items()},
        delta_softplus=True, reverse=reverse, backend=backend,
    )  # fmt: skip
    assert got.dtype == torch.float32
    atol = 1e-4
    if regime == "positive":
        # Growing states (|y| ~ 4e3): an output that cancels down to ~1 keeps only fp32's
        # precision relative to the terms it sums, so atol scales with max |y| here.
        atol += 2e-6 * expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("reverse", [False, True])
@NEEDS_COMPILED
def test_compiled_float32_gradients_match_float64_reference(reverse):
    gen = torch.Generator().manual_seed(7)
    flags = dict(D=True, z=True, delta_bias=True, initial_state=True)
    base = make_inputs(2, 300, 21, 16, "negative", gen, **flags)  # a 16-channel block and 5 more
    weight = torch.randn(2, 300, 21, generator=gen, dtype=torch.float64)
    grads = []
    for dtype, fn in ((torch.float32, selective_scan), (torch.float64, selective_scan_reference)):
        inputs = {k: v.to(dtype).requires_grad_() for k, v in base.items()}
        extra = {"backend": "cpu"} if fn is selective_scan else {}
        y = fn(**inputs, delta_softplus=True, reverse=reverse, **extra)
        (y * weight.to(dtype)).sum().backward()
        grads.append({k: v.grad.double() for k, v in inputs.items()})
    for key in base:
        scale = grads[1][key].abs().max().item()
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-5 * scale)


@NEEDS_COMPILED
def test_compiled_kernel_splits_channels_over_threads():
    gen = torch.Generator().manual_seed(8)
    base = make_inputs(2, 31, 39, 3, "negative", gen, D=True, initial_state=True)
    results = []
    previous = torch.get_num_threads()
    for threads in (1, 2):  # slices of 20 and 19 channels (a block and leftovers); dB/dC summed across slices
        torch.set_num_threads(threads)
        try:
            inputs = {k: v.clone().requires_grad_() for k, v in base.items()}
            y, state = selective_scan(**inputs, return_last_state=True, backend="cpu")
            (y.square().sum() + state.sum()).backward()
        finally:
            torch.set_num_threads(previous)
        results.append([y, state, *(v.grad for v in inputs.values())])
    for one, split in zip(*results, strict=True):
        torch.testing.assert_close(split, one, rtol=1e-12, atol=1e-12)


def test_backend_choice_without_compiled_kernel(monkeypatch):
    build = importlib.import_module("omniseq.kernels.cpu._build")
    monkeypatch.setenv(build.ENV_SWITCH, "0")
    build._load.cache_clear()
    try:
        gen = torch.Generator().manual_seed(9)
        inputs = make_inputs(1, 9, 2, 2, "negative", gen)
        torch.testing.assert_close(selective_scan(**inputs), selective_scan_reference(**inputs))
        with pytest.raises(RuntimeError, match="compiled CPU kernel 'selective_scan' is unavailable"):
            selective_scan(**inputs, backend="cpu")
    finally:
        build._load.cache_clear()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_half_precision_keeps_float32_state(backend):
    gen = torch.Generator().manual_seed(1)
    inputs = make_inputs(2, 70, 4, 3, "negative", gen, D=True, z=True)
    low = {k: v.bfloat16() for k, v in inputs.items()}
    y, state = selective_scan(**low, return_last_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    y_ref, state_ref = selective_scan_reference(
        **{k: v.double() for k, v in low.items()}, return_last_state=True
    )
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(state.double(), state_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("backend", "recompute"), [("torch", False), ("torch", True), pytest.param("cpu", False, marks=NEEDS_COMPILED)]
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("regime", ["negative", "positive"])
def test_gradients_match_reference(backend, recompute, reverse, regime):
    gen = torch.Generator().manual_seed(2)
    flags = dict(D=True, z=True, delta_bias=True, initial_state=True)
    base = make_inputs(2, 23, 3, 2, regime, gen, **flags)
    weight = torch.randn(2, 23, 3, generator=gen, dtype=torch.float64)
    state_weight = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (selective_scan, selective_scan_reference):
        inputs = {k: v.clone().requires_grad_() for k, v in base.items()}
        extra = {"backend": backend} if fn is selective_scan else {}
        with chunking(5, recompute=recompute):
            y, state = fn(
                **inputs, delta_softplus=True, reverse=reverse, return_last_state=True, **extra
            )
        ((y * weight).sum() + (state * state_weight).sum()).backward()
        grads.append({k: v.grad for k, v in inputs.items()})
    for key in base:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck(backend):
    gen = torch.Generator().manual_seed(3)
    flags = dict(D=True, z=True, delta_bias=True, initial_state=True)
    base = make_inputs(1, 7, 2, 2, "negative", gen, **flags)
    names = list(base)

    def fn(*tensors):
        y, state = selective_scan(
            **dict(zip(names, tensors, strict=True)),
            delta_softplus=True, return_last_state=True, backend=backend,
        )  # fmt: skip
        return y, state

    tensors = tuple(v.requires_grad_() for v in base.values())
    with chunking(3, recompute=True):
        assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_split_sequence_carries_state(reverse, backend):
    gen = torch.Generator().manual_seed(4)
    inputs = make_inputs(2, 37, 4, 3, "negative", gen, D=True, z=True, initial_state=True)
    run = {"reverse": reverse, "return_last_state": True, "backend": backend}
    whole, whole_state = selective_scan(**inputs, **run)
    cut = 16
    seq_keys = ("u", "delta", "B", "C", "z")
    head = {k: (v[:, :cut] if k in seq_keys else v) for k, v in inputs.items()}
    tail = {k: (v[:, cut:] if k in seq_keys else v) for k, v in inputs.items()}
    first, second = (tail, head) if reverse else (head, tail)
    y1, state1 = selective_scan(**first, **run)
    y2, state2 = selective_scan(**{**second, "initial_state": state1}, **run)
    joined = torch.cat([y2, y1] if reverse else [y1, y2], 1)
    torch.testing.assert_close(joined, whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state2, whole_state, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_known_answer_single_state(backend):
    # D = N = 1, A = 0, delta = 1, B = C = 1: h_t is the running sum of u.
    u = torch.randn(1, 20, 1, dtype=torch.float64)
    ones = torch.ones(1, 20, 1, dtype=torch.float64)
    A = torch.zeros(1, 1, dtype=torch.float64)
    torch.testing.assert_close(
        selective_scan(u, ones, A, ones, ones, backend=backend), u.cumsum(1)
    )


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_sequence(backend):
    gen = torch.Generator().manual_seed(5)
    inputs = make_inputs(2, 0, 3, 2, "negative", gen, initial_state=True)
    y, state = selective_scan(**inputs, return_last_state=True, backend=backend)
    assert y.shape == (2, 0, 3)
    torch.testing.assert_close(state, inputs["initial_state"])


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_reference])
def test_bad_shapes_raise(fn):
    gen = torch.Generator().manual_seed(6)
    inputs = make_inputs(2, 5, 3, 4, "negative", gen)
    with pytest.raises(ValueError, match=r"u must have shape \(B, L, D\)"):
        fn(**{**inputs, "u": inputs["u"][0]})
    with pytest.raises(ValueError, match=r"A must have shape \(D, N\) = \(3, N\)"):
        fn(**{**inputs, "A": inputs["A"][:2]})
    with pytest.raises(ValueError, match=r"B must have shape \(B, L, N\) = \(2, 5, 4\)"):
        fn(**{**inputs, "B": inputs["B"][:, :4]})
    with pytest.raises(ValueError, match=r"initial_state must have shape \(B, D, N\)"):
        fn(**inputs, initial_state=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match=r"D must have shape \(D,\) = \(3,\)"):
        fn(**inputs, D=torch.zeros(4))
    with pytest.raises(ValueError, match="A must be real"):
        fn(**{**inputs, "A": inputs["A"].to(torch.complex128)})


@NEEDS_COMPILED
def test_compiled_softplus_matches_torch_and_has_exact_gradient():
    softplus_with_bias_cpu = importlib.import_module(
        "omniseq.kernels.cpu.selective_scan"
    ).softplus_with_bias_cpu
    gen = torch.Generator().manual_seed(10)
    # Spans both sides of PyTorch's threshold (identity above 20) and deep underflow.
    x = torch.linspace(-60, 60, 3 * 41, dtype=torch.float64).reshape(3, 41)
    bias = torch.randn(41, generator=gen, dtype=torch.float64)
    expected = torch.nn.functional.softplus(x + bias)
    torch.testing.assert_close(softplus_with_bias_cpu(x, bias), expected, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(
        softplus_with_bias_cpu(x.float(), bias.float()), expected.float(), rtol=4e-6, atol=1e-18
    )
    small = (torch.randn(2, 5, generator=gen, dtype=torch.float64).requires_grad_(),
             torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_())  # fmt: skip
    assert torch.autograd.gradcheck(softplus_with_bias_cpu, small)


@NEEDS_COMPILED
def test_loading_the_compiled_kernel_keeps_subnormals():
    # A library linked with -ffast-math would turn on flush-to-zero for the whole process.
    importlib.import_module("omniseq.kernels.cpu").load_cpu_library("selective_scan")
    assert sys.float_info.min * 0.5 > 0
    assert torch.tensor([1e-39]).mul(0.5).item() > 0
