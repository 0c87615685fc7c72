"""Gated FSMN mixer against its definition written as explicit loops, and a training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.backbones.mixers import build_mixer
from omniseq.backbones.separators import MaskSeparator
from omniseq.domains.audio.metrics import pit_si_snr


def fsmn_by_loops(mixer, x: torch.Tensor) -> torch.Tensor:
    """``m_t = p_t + sum_i a_i p_{t + offset_i}`` tap by tap (zeros outside), then the gates."""
    u, v = F.silu(mixer.in_proj(x)).chunk(2, dim=-1)
    p = mixer.proj(v)
    taps = mixer.memory.weight[:, 0]  # (hidden, kernel_size)
    span, L = mixer.receptive_span, x.shape[1]
    first = -span if mixer.causal else -(span // 2)
    memory = torch.zeros_like(p)
    for t in range(L):
        for i in range(mixer.kernel_size):
            source = t + first + i * mixer.dilation
            if 0 <= source < L:
                memory[:, t] += taps[:, i] * p[:, source]
    return mixer.out_proj(u * (v + p + memory))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (5, 1), (3, 3)])
def test_fsmn_matches_the_tap_loop(causal, kernel_size, dilation):
    torch.manual_seed(0)
    mixer = build_mixer("fsmn", 6, expand=1.5, kernel_size=kernel_size, dilation=dilation, causal=causal).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), fsmn_by_loops(mixer, x), rtol=1e-12, atol=1e-12)


def test_fsmn_reach_is_exactly_its_taps():
    torch.manual_seed(0)
    mixer = build_mixer("fsmn", 4, kernel_size=5, dilation=2).double()  # reaches t-4 .. t+4
    x = torch.randn(1, 21, 4, dtype=torch.float64, requires_grad=True)
    mixer(x)[0, 10].sum().backward()
    touched = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == [6, 8, 10, 12, 14]


def test_fsmn_bad_options_are_named():
    with pytest.raises(ValueError, match="odd"):
        build_mixer("fsmn", 4, kernel_size=4)
    with pytest.raises(ValueError, match="dilation"):
        build_mixer("fsmn", 4, dilation=0)
    build_mixer("fsmn", 4, kernel_size=4, causal=True)  # an even causal kernel is fine


def test_dualpath_fsmn_separator_learns_a_fixed_mixture():
    torch.manual_seed(0)
    model = MaskSeparator(channels=16, masker_options=dict(mixer="fsmn", dim=16, chunk_size=10, mlp_ratio=2.0))
    t = torch.arange(800) / 8000
    sources = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sign(torch.sin(2 * torch.pi * 97 * t))])[None]
    mixture = sources.sum(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scores = []
    for _ in range(25):
        best, _ = pit_si_snr(model(mixture), sources)
        optimizer.zero_grad()
        (-best.mean()).backward()
        optimizer.step()
        scores.append(best.item())
    assert scores[-1] > scores[0] + 5.0, scores
