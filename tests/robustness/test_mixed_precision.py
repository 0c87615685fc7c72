"""Mixed precision: every registered mixer trains under bf16-mixed, and the kernels keep
their states and gate sums in fp32 whatever autocast or the input dtype asks for.

The training runs use Lightning's ``precision="bf16-mixed"`` on CPU (what users run;
``16-mixed`` on a GPU when one is present): a tiny model (linear embedding, two omniseq
``Block``s with the mixer, linear head) learns to recover each sequence's hidden offset
from noisy tokens, a task that rewards mixing tokens (per-token guessing cannot beat an
MSE of 0.5). The kernel checks compare half-precision inputs against the float64 loop
references at lengths where a bf16 state or gate sum would visibly drift.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import omniseq.backbones  # noqa: F401  (registers every mixer, "windowed" included)
from omniseq.backbones.blocks import Block
from omniseq.backbones.mixers import build_mixer, list_mixers
from omniseq.kernels import (
    fft_conv,
    fft_conv_reference,
    gated_linear_attention,
    gated_linear_attention_recurrent,
    linear_scan,
    linear_scan_reference,
    selective_scan,
    selective_scan_reference,
    ssm_conv_kernel,
)

DIM, SEQ, GRID, FEATURES = 16, 16, (4, 4), 4
# Tiny options per registered mixer; a newly registered mixer must be added here
# (test_every_registered_mixer_has_tiny_options says so) rather than silently skipped.
TINY = {
    "attention": {"num_heads": 2},
    "window_attention": {"num_heads": 2, "window_size": 2, "shift_size": 1},
    "gla": {"num_heads": 2},
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "s5": {"d_state": 8},
    "mlp": {"seq_len": SEQ},
    "fsmn": {"kernel_size": 3},
    "windowed": {"inner": "gla", "window_size": 2, "num_heads": 2},
    "vig": {"num_heads": 2},
}


def mixer_variants() -> list[tuple[str, bool]]:
    """(name, causal) for every registered mixer: bidirectional, plus causal where it exists."""
    variants = []
    for name in list_mixers():
        variants.append((name, False))
        try:
            causal = build_mixer(name, DIM, causal=True, **TINY.get(name, {})).causal
        except (ValueError, TypeError):  # e.g. window attention refuses causal=True
            causal = False
        if causal:
            variants.append((name, True))
    return variants


VARIANTS = mixer_variants()


def test_every_registered_mixer_has_tiny_options():
    assert set(list_mixers()) <= set(TINY), f"add tiny options for {set(list_mixers()) - set(TINY)}"


class OffsetTask(L.LightningModule):
    """Embed, two mixer blocks, head; MSE to the sequence's hidden offset at every token."""

    def __init__(self, mixer: str, causal: bool, dim: int = DIM, lr: float = 1e-2) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, dim)
        self.blocks = nn.ModuleList(
            Block(dim, mixer=mixer, mixer_options=TINY[mixer], causal=causal, mlp_ratio=2)
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, FEATURES)
        self.lr = lr
        self.losses: list[float] = []
        self.nonfinite: list[str] = []
        self.autocast_dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, grid=GRID)
        return self.head(self.norm(h))

    def training_step(self, batch, batch_idx):
        x, target = batch
        device = x.device.type
        if torch.is_autocast_enabled(device):
            self.autocast_dtypes.add(torch.get_autocast_dtype(device))
        loss = F.mse_loss(self(x).float(), target)
        self.losses.append(loss.item())
        if not torch.isfinite(loss):
            self.nonfinite.append(f"step {batch_idx}: loss {loss.item()}")
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        bad = [
            n
            for n, p in self.named_parameters()
            if p.grad is not None and not p.grad.isfinite().all()
        ]
        if bad:
            self.nonfinite.append(f"step {self.global_step}: non-finite grads in {bad}")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        bad = [n for n, p in self.named_parameters() if not p.isfinite().all()]
        if bad:
            self.nonfinite.append(f"step {batch_idx}: non-finite params {bad}")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def offset_data(steps: int, batch: int = 16, seed: int = 0) -> DataLoader:
    """x = c + noise with one hidden offset c per sequence; target c at every token.

    Fresh sequences every step, so a falling loss is learning, not memorising.
    """
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randn(steps * batch, 1, FEATURES, generator=gen)
    x = offsets + torch.randn(steps * batch, SEQ, FEATURES, generator=gen)
    return DataLoader(TensorDataset(x, offsets.expand_as(x).clone()), batch_size=batch)


def fit(task: OffsetTask, accelerator: str, precision: str, steps: int = 50) -> None:
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, offset_data(steps))


@pytest.mark.parametrize(
    "name,causal", VARIANTS, ids=[f"{n}-{'causal' if c else 'bi'}" for n, c in VARIANTS]
)
def test_bf16_mixed_training_is_finite_and_learns(name, causal):
    torch.manual_seed(0)
    task = OffsetTask(name, causal)
    fit(task, "cpu", "bf16-mixed")
    assert task.autocast_dtypes == {torch.bfloat16}, "the steps did not run under bf16 autocast"
    assert not task.nonfinite, task.nonfinite
    assert len(task.losses) == 50
    first, last = sum(task.losses[:10]) / 10, sum(task.losses[-10:]) / 10
    assert last < 0.7 * first, f"loss did not fall under bf16-mixed: {first:.3f} -> {last:.3f}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a CUDA device")
@pytest.mark.parametrize(
    "name,causal", VARIANTS, ids=[f"{n}-{'causal' if c else 'bi'}" for n, c in VARIANTS]
)
def test_fp16_mixed_training_on_gpu_is_finite_and_learns(name, causal):
    torch.manual_seed(0)
    task = OffsetTask(name, causal, dim=64)  # head sizes of 16+, as the Triton kernels want
    fit(task, "gpu", "16-mixed")
    assert task.autocast_dtypes == {torch.float16}
    assert all(torch.isfinite(torch.tensor(task.losses))), task.losses
    assert all(p.isfinite().all() for p in task.parameters())
    # GradScaler may skip a step or two while it calibrates; more means real overflow.
    assert len(task.nonfinite) <= 3, task.nonfinite
    first, last = sum(task.losses[:10]) / 10, sum(task.losses[-10:]) / 10
    assert last < 0.7 * first, f"loss did not fall under 16-mixed: {first:.3f} -> {last:.3f}"


# ----------------------------------------------------------------------------- kernels


def _gla_inputs(L: int, gate: float, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, L, 2, 8, generator=gen) for _ in range(3))
    g = -gate * torch.rand(1, L, 2, 8, generator=gen)  # small gates: slow decay, long memory
    return [t.to(dtype) for t in (q, k, v, g)]


def _random_scan_inputs(L: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    u, delta, B, C = (torch.randn(1, L, n, generator=gen) for n in (6, 6, 4, 4))
    A = -torch.rand(6, 4, generator=gen) - 0.1
    return u, delta, A, B, C


KERNEL_CALLS = {
    "gla_chunked": lambda: gated_linear_attention(*_gla_inputs(300, 0.5, torch.float32)),
    "gla_recurrent": lambda: gated_linear_attention_recurrent(*_gla_inputs(40, 0.5, torch.float32)),
    "gla_strong_gates": lambda: gated_linear_attention(*_gla_inputs(300, 200.0, torch.float32)),
    "linear_scan": lambda: linear_scan(0.99 * torch.rand(2, 500, 8), torch.randn(2, 500, 8)),
    "selective_scan": lambda: selective_scan(*_random_scan_inputs(300), delta_softplus=True),
    "ssm_conv_kernel": lambda: ssm_conv_kernel(
        torch.linspace(-6, -1, 8),
        torch.complex(-0.5 * torch.ones(8, 4), torch.pi * torch.arange(4.0).expand(8, 4)),
        torch.randn(8, 4, dtype=torch.cfloat),
        1000,
    ),
    "fft_conv": lambda: fft_conv(torch.randn(2, 1000, 8), torch.randn(8, 1000)),
}


@pytest.mark.parametrize("kernel", list(KERNEL_CALLS))
def test_kernels_compute_the_same_under_autocast(kernel):
    """Autocast must not reach inside a kernel: fp32 inputs give the fp32 result bit for bit
    (before, its matmuls and einsums ran in bf16: GLA was 5e-2 off, the scan 1e-1)."""
    torch.manual_seed(0)
    plain = KERNEL_CALLS[kernel]()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = KERNEL_CALLS[kernel]()
    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    for a, b in zip(as_tuple(plain), as_tuple(autocast), strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Max error at most ``rel`` of the reference's largest magnitude."""
    err = (actual.double() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"error {err:.3g} > {rel} * {scale:.3g}"


def test_gla_bf16_inputs_keep_fp32_gate_sums_and_state():
    """L = 4096 with gates ~-5e-4: a bf16 cumulative sum stalls once its ulp (2^-9 near -0.3)
    exceeds the gates, and a bf16 state drops whole updates; fp32 keeps both."""
    inputs = _gla_inputs(4096, 1e-3, torch.bfloat16, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, state = gated_linear_attention(*inputs)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    o_ref, state_ref = gated_linear_attention_recurrent(*(t.double() for t in inputs))
    _assert_close_to(o, o_ref, rel=1e-2)  # bf16 rounding of the output only
    _assert_close_to(state, state_ref, rel=1e-5)  # the state never saw bf16


def test_linear_scan_bf16_inputs_accumulate_in_fp32():
    """a = 1 - 2^-8 (exact in bf16): h climbs to ~256, where bf16's spacing is 2 and adding
    b ~ 1 would round away; the fp32 scan tracks the float64 loop."""
    gen = torch.Generator().manual_seed(2)
    a = torch.full((2, 4096, 4), 1 - 2**-8, dtype=torch.bfloat16)
    b = (torch.rand(2, 4096, 4, generator=gen) + 0.5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear_scan(a, b)
    assert h.dtype == torch.bfloat16
    # bf16 output rounding is up to 2^-8 relative; a bf16 state is 0.5 off here.
    _assert_close_to(h, linear_scan_reference(a.double(), b.double()), rel=8e-3)


def test_selective_scan_bf16_inputs_keep_fp32_discretisation_and_state():
    """exp(dt * A) ~ 1 - 7e-4 rounds to 1 in bf16 (no decay at all over 4096 steps); the
    kernel's softplus, exp and state stay fp32 and match the float64 loop."""
    u, delta, _, B, C = (t.to(torch.bfloat16) for t in _random_scan_inputs(4096, seed=3))
    A = torch.full((6, 4), -1e-3)
    D = torch.ones(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, last = selective_scan(
            u, delta, A, B, C, D=D, delta_softplus=True, return_last_state=True
        )
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    y_ref, last_ref = selective_scan_reference(
        u.double(), delta.double(), A.double(), B.double(), C.double(), D=D.double(),
        delta_softplus=True, return_last_state=True,
    )  # fmt: skip
    _assert_close_to(y, y_ref, rel=1e-2)
    _assert_close_to(last, last_ref, rel=1e-5)


def test_fft_conv_of_bf16_inputs_runs_in_fp32():
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(1, 4096, 4, generator=gen).to(torch.bfloat16)
    k = torch.randn(4, 4096, generator=gen) * torch.exp(-torch.arange(4096) / 1000.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv(u, k)
    assert y.dtype == torch.float32  # promoted with the fp32 kernel, never rounded to bf16
    _assert_close_to(y, fft_conv_reference(u.double(), k.double()), rel=1e-5)


# Causal mixers whose step carries a running sum (which must stay fp32) vs. ones whose
# state is only a cache of past inputs (attention's KV cache, the token MLP's buffer).
RECURRENT_STATE = {
    "gla": lambda state: [state],
    "mamba": lambda state: [state["ssm"]],
    "s4d": lambda state: [state],
    "s5": lambda state: [state],
}
CACHE_STATE = {"attention", "mlp", "fsmn"}


@pytest.mark.parametrize("name", [n for n, causal in VARIANTS if causal])
def test_causal_steps_keep_recurrent_states_fp32_under_autocast(name):
    assert name in RECURRENT_STATE or name in CACHE_STATE, f"classify {name}'s step state here"
    torch.manual_seed(0)
    mixer = build_mixer(name, DIM, causal=True, **TINY[name]).eval()
    x = torch.randn(2, SEQ, DIM)
    with torch.no_grad():
        reference = mixer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state = mixer.init_state(2)
            outputs = []
            for t in range(x.shape[1]):
                y_t, state = mixer.step(x[:, t], state)
                outputs.append(y_t)
    if name in RECURRENT_STATE:
        for s in RECURRENT_STATE[name](state):
            assert s.dtype in (torch.float32, torch.complex64), f"{name} state drifted to {s.dtype}"
    steps = torch.stack(outputs, 1).float()
    assert torch.isfinite(steps).all()
    torch.testing.assert_close(
        steps, reference, rtol=0.05, atol=0.05 * reference.abs().max().item()
    )
