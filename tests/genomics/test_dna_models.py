"""DNA models: RC equivariance (PS), post-hoc conjoining (Ph), causality and step == parallel."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.backbones.cnn1d import DNACNN
from omniseq.backbones.dna import CHAR_COMPLEMENT, DNAModel
from omniseq.domains.genomics import NucleotideTokenizer

COMP = torch.tensor(CHAR_COMPLEMENT)


def rc_ids(ids: torch.Tensor) -> torch.Tensor:
    return COMP[ids].flip(1)


def rc_features(h: torch.Tensor) -> torch.Tensor:
    """RC acting on PS features: reverse the sequence and the channels."""
    return h.flip(1).flip(-1)


def test_char_complement_matches_tokenizer():
    assert NucleotideTokenizer().complement_ids.tolist() == list(CHAR_COMPLEMENT)


@settings(max_examples=6, deadline=None)
@given(length=st.integers(1, 40), mixer=st.sampled_from(["mamba", "gla", "attention"]))
def test_ps_is_rc_equivariant_on_random_weights(length, mixer):
    torch.manual_seed(length)
    options = {"d_state": 4} if mixer == "mamba" else {}
    model = DNAModel(dim=16, depth=2, mixer=mixer, mixer_options=options, rc_mode="ps", num_heads=2,
                     pos_embed="none" if mixer == "mamba" else "sinusoidal").double().eval()
    for p in model.parameters():  # random, not init, weights
        torch.nn.init.normal_(p, std=0.3)
    ids = torch.randint(5, 10, (3, length))
    h, h_rc = model.forward_features(ids), model.forward_features(rc_ids(ids))
    torch.testing.assert_close(h_rc, rc_features(h), rtol=1e-10, atol=1e-10)
    logits, logits_rc = model(ids), model(rc_ids(ids))
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., COMP], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.forward_pooled(rc_ids(ids)), model.forward_pooled(ids), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("patch_size, length, kept", [(1, 12, 7), (3, 13, 8)])
def test_ps_equivariance_with_right_padding(patch_size, length, kept):
    """A right-padded record and its reverse complement, one base per token or a k-mer stem
    (whose last patch is then partial on one strand and whole on the other)."""
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}, rc_mode="ps", patch_size=patch_size).double().eval()
    for p in model.parameters():  # random weights, not the init (the stem starts near zero)
        torch.nn.init.normal_(p, std=0.3)
    ids = torch.randint(5, 10, (2, length))
    mask = torch.ones_like(ids, dtype=torch.bool)
    ids[1, kept:], mask[1, kept:] = 0, False
    rc = ids.clone()
    rc[0] = COMP[ids[0]].flip(0)
    rc[1, :kept] = COMP[ids[1, :kept]].flip(0)
    torch.testing.assert_close(model.forward_pooled(rc, mask), model.forward_pooled(ids, mask), rtol=1e-10, atol=1e-10)
    h, h_rc = model.forward_features(ids, mask), model.forward_features(rc, mask)
    torch.testing.assert_close(h_rc[1, :kept], h[1, :kept].flip(0).flip(-1), rtol=1e-10, atol=1e-10)


def test_plain_bidirectional_model_is_not_equivariant():
    """The equivariance test can fail: a non-PS model breaks it."""
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}).double().eval()
    ids = torch.randint(5, 10, (2, 20))
    gap = (model(rc_ids(ids)) - model(ids).flip(1)[..., COMP]).abs().max()
    assert gap > 1e-3


def test_ph_conjoins_at_eval_only():
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}, rc_mode="ph").double()
    ids = torch.randint(5, 10, (2, 20))
    model.eval()
    torch.testing.assert_close(model.forward_pooled(rc_ids(ids)), model.forward_pooled(ids))
    torch.testing.assert_close(model(rc_ids(ids)), model(ids).flip(1)[..., COMP])
    plain = model.trunk(ids)
    expected = 0.5 * (model.lm_head(plain) + model.lm_head(model.trunk(rc_ids(ids))).flip(1)[..., COMP])
    torch.testing.assert_close(model(ids), expected)
    model.train()
    torch.testing.assert_close(model(ids), model.lm_head(plain))


@pytest.mark.parametrize("mixer,options", [("mamba", {"d_state": 4}), ("gla", {})])
def test_causal_lm_is_causal_and_step_equals_parallel(mixer, options):
    torch.manual_seed(0)
    model = DNAModel(vocab_size=261, dim=16, depth=2, mixer=mixer, mixer_options=options, causal=True,
                     num_heads=2, pos_embed="sinusoidal").double().eval()
    ids = torch.randint(5, 261, (2, 19))
    logits = model(ids)
    changed = ids.clone()
    changed[:, 11:] = torch.randint(5, 261, (2, 8))
    torch.testing.assert_close(model(changed)[:, :11], logits[:, :11], rtol=1e-12, atol=1e-12)
    assert (model(changed)[:, 11:] - logits[:, 11:]).abs().max() > 1e-6
    state = model.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(ids.shape[1]):
        out, state = model.step(ids[:, t], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, rtol=1e-9, atol=1e-9)


def test_causal_lm_gradient_does_not_reach_past_tokens():
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}, causal=True).double()
    x = model.embed(torch.randint(5, 10, (1, 12))).detach().requires_grad_(True)
    h = x
    for block in model.blocks:
        h = block(h)
    h[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0 and x.grad[0, :6].abs().max() > 0


def test_greedy_generate_matches_argmax_of_parallel_form():
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=1, mixer_options={"d_state": 4}, causal=True).eval()
    out = model.generate(torch.tensor([[5, 6, 7]]), 4)
    assert out.shape == (1, 7)
    for t in range(3, 7):
        assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_bad_inputs_and_options():
    with pytest.raises(ValueError, match="dim must be even"):
        DNAModel(dim=15, rc_mode="ps")
    with pytest.raises(ValueError, match="causal LM reads one strand"):
        DNAModel(causal=True, rc_mode="ps")
    with pytest.raises(ValueError, match="complement must be an involution"):
        DNAModel(vocab_size=4, complement=[1, 2, 3, 0])
    model = DNAModel(dim=8, depth=1, max_length=8)
    with pytest.raises(ValueError, match=r"token ids of shape \(B, L\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="length 9 exceeds max_length=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(RuntimeError, match="causal"):
        model.init_state(1)


def test_cnn_baseline_shapes_and_padding_invariance():
    torch.manual_seed(0)
    cnn = DNACNN(dim=16, depth=2, kernel_size=5).eval()
    ids = torch.randint(5, 10, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = padded != 0
    assert cnn(ids).shape == (1, 10, 10)
    torch.testing.assert_close(cnn.forward_pooled(padded, mask), cnn.forward_pooled(ids))


def test_sinusoidal_positions_leave_token_signal_at_init():
    """Fixed position codes must not swamp the tokens (they did ~35:1, so every sequence
    pooled to nearly the same vector and a GUE attention model stayed at chance)."""
    torch.manual_seed(0)
    ids = torch.randint(5, 9, (32, 101))
    pooled = {}
    for pos in ("none", "sinusoidal"):
        torch.manual_seed(1)  # positions have no parameters: both models get identical weights
        model = DNAModel(dim=64, depth=2, mixer="attention", num_heads=4, channel_mixer="mlp",
                         norm="layernorm", pos_embed=pos).eval()
        with torch.no_grad():
            pooled[pos] = (model.forward_pooled(ids), model.forward_pooled(ids.roll(7, dims=1)))
    # Oracle: the position-free model sees only tokens (mean-pooled attention is order-blind).
    torch.testing.assert_close(pooled["none"][0], pooled["none"][1])
    spread_tokens_only = pooled["none"][0].std(0).mean()
    spread = pooled["sinusoidal"][0].std(0).mean()
    assert spread > 0.5 * spread_tokens_only, (spread, spread_tokens_only)
    # ... and the positions still matter: a rotated sequence pools differently.
    assert (pooled["sinusoidal"][0] - pooled["sinusoidal"][1]).abs().max() > 1e-3
