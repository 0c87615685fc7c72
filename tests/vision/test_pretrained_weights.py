"""Official checkpoints convert into our models: a state dict in each official layout
(Vim-T, ViG-T, Swin-T, DeiT-T) loads strictly, through ``pretrained_cfg_overlay=dict(file=...)``,
also at another input size (position embeddings, windows). Where the official forward
runs on CPU (timm's DeiT-T, Swin-T) or is short enough to restate here (ViG), the logits match."""

from __future__ import annotations

import argparse
import math

import timm
import torch
import torch.nn.functional as F

import omniseq  # noqa: F401  registers the models
from omniseq.backbones._pretrained import HUB_SOURCES, swin_checkpoint_filter_fn


def _perturb_vectors(model: torch.nn.Module) -> None:
    """Non-trivial norms and biases, so that a wrong mapping cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))


def _save(state: dict, path, **extra) -> str:
    torch.save({"model": {k: v.contiguous() for k, v in state.items()}, **extra}, path)
    return str(path)


def _from_file(name: str, path: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs).eval()


# -- official key layouts, written from the official model code ------------------------


def official_vim_state_dict(depth: int = 24, dim: int = 192, d_state: int = 16) -> dict[str, torch.Tensor]:
    """hustvl/Vim ``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``."""
    inner, rank = 2 * dim, math.ceil(dim / 16)
    sd = {
        "cls_token": (1, 1, dim), "pos_embed": (1, 197, dim), "patch_embed.proj.weight": (dim, 3, 16, 16),
        "patch_embed.proj.bias": (dim,), "norm_f.weight": (dim,), "head.weight": (1000, dim), "head.bias": (1000,),
    }
    for i in range(depth):
        p = f"layers.{i}."
        sd[p + "norm.weight"] = (dim,)
        sd[p + "mixer.in_proj.weight"] = (2 * inner, dim)
        sd[p + "mixer.out_proj.weight"] = (dim, inner)
        for s in ("", "_b"):
            sd[p + f"mixer.A{s}_log"] = (inner, d_state)
            sd[p + f"mixer.D{s}"] = (inner,)
            sd[p + f"mixer.conv1d{s}.weight"] = (inner, 1, 4)
            sd[p + f"mixer.conv1d{s}.bias"] = (inner,)
            sd[p + f"mixer.x_proj{s}.weight"] = (rank + 2 * d_state, inner)
            sd[p + f"mixer.dt_proj{s}.weight"] = (inner, rank)
            sd[p + f"mixer.dt_proj{s}.bias"] = (inner,)
    return {k: 0.02 * torch.randn(shape) for k, shape in sd.items()}


def official_vig_state_dict(depth: int = 12, dim: int = 192) -> dict[str, torch.Tensor]:
    """hustvl/ViG ``configs/vig/vig-t.yaml``: V2 patch embed, SwiGLU MLP, expand_k 0.5."""
    key, hidden, half = dim // 2, 256 * math.ceil(int(dim * 4 * 2 / 3) / 256), dim // 2
    sd = {
        "pos_embed": (1, 196, dim), "patch_embed.proj.0.weight": (half, 3, 9, 9), "patch_embed.proj.0.bias": (half,),
        "patch_embed.proj.1.weight": (half,), "patch_embed.proj.1.bias": (half,),
        "patch_embed.proj.3.weight": (dim, half, 3, 3), "patch_embed.proj.3.bias": (dim,),
        "patch_embed.proj.4.weight": (dim,), "patch_embed.proj.4.bias": (dim,),
        "norm.weight": (dim,), "head.weight": (1000, dim), "head.bias": (1000,),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "attn_norm.weight": (dim,), p + "mlp_norm.weight": (dim,),
            p + "attn.in_proj.0.weight": (dim, 1, 3, 3), p + "attn.qkv_proj.weight": (2 * key + dim, dim),
            p + "attn.gk_proj.0.weight": (16, dim), p + "attn.gk_proj.1.weight": (2 * key, 16),
            p + "attn.gk_proj.1.bias": (2 * key,), p + "attn.o_proj.weight": (dim, dim),
            p + "attn.g_norm.weight": (64,), p + "attn.l_norm.weight": (64,),
            p + "attn.g_proj.weight": (dim, dim), p + "attn.g_proj.bias": (dim,),
            p + "mlp.gate_proj.weight": (2 * hidden, dim), p + "mlp.down_proj.weight": (dim, hidden),
        }
    state = {k: 0.1 * torch.randn(shape) for k, shape in sd.items()}
    for k in state:
        if k.endswith("norm.weight") or k.endswith((".1.weight", ".4.weight")) and "patch_embed" in k:
            state[k] += 1.0
    return state


# -- a restatement of hustvl/ViG's forward (eval mode), the oracle for our ViG ---------


def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _gla_loop(q, k, v, g, reverse):
    """One direction of GLA, token by token: ``S = diag(exp g_t) S + k_t v_t^T``, ``o_t = q_t S``."""
    B, L, H, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1])
    out = [None] * L
    for t in reversed(range(L)) if reverse else range(L):
        state = g[:, t].exp()[..., None] * state + k[:, t][..., None] * v[:, t][..., None, :]
        out[t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * K**-0.5, state)
    return torch.stack(out, 1)


def official_vig_forward(sd, x, depth, heads=3, conv_act=True, out_act=True):
    dim = sd["norm.weight"].shape[0]
    key = dim // 2
    y = F.conv2d(x, sd["patch_embed.proj.0.weight"], sd["patch_embed.proj.0.bias"], stride=8, padding=1)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (dim // 2,), sd["patch_embed.proj.1.weight"], sd["patch_embed.proj.1.bias"])
    y = F.silu(y.permute(0, 3, 1, 2))
    y = F.conv2d(y, sd["patch_embed.proj.3.weight"], sd["patch_embed.proj.3.bias"], stride=2, padding=1)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (dim,), sd["patch_embed.proj.4.weight"], sd["patch_embed.proj.4.bias"])
    B, H, W, _ = y.shape
    pos = sd["pos_embed"].reshape(1, 14, 14, dim).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(H, W), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    h = y.reshape(B, H * W, dim) + pos
    for i in range(depth):
        p = f"blocks.{i}."
        a = _rms(h, sd[p + "attn_norm.weight"])
        xs = F.conv2d(a.transpose(1, 2).reshape(B, dim, H, W), sd[p + "attn.in_proj.0.weight"], padding=1, groups=dim)
        xs = xs.flatten(2).transpose(1, 2)
        xs = F.silu(xs) if conv_act else xs
        q, k, v = (xs @ sd[p + "attn.qkv_proj.weight"].T).split([key, key, dim], -1)
        gk = (xs @ sd[p + "attn.gk_proj.0.weight"].T) @ sd[p + "attn.gk_proj.1.weight"].T + sd[p + "attn.gk_proj.1.bias"]
        g_f, g_b = (F.logsigmoid(gk) / 16).chunk(2, -1)
        split = [t.reshape(B, H * W, heads, -1) for t in (q, k, v, g_f, g_b)]
        o = (_gla_loop(*split[:3], split[3], False) + _gla_loop(*split[:3], split[4], True)) / 2
        o = _rms(o, sd[p + "attn.g_norm.weight"])
        local = _rms(xs.reshape(B, H * W, heads, -1), sd[p + "attn.l_norm.weight"])
        gate = torch.sigmoid(xs @ sd[p + "attn.g_proj.weight"].T + sd[p + "attn.g_proj.bias"]).reshape_as(local)
        o = (o * gate + local * (1 - gate)).flatten(-2)
        h = h + (F.silu(o) if out_act else o) @ sd[p + "attn.o_proj.weight"].T
        m = _rms(h, sd[p + "mlp_norm.weight"]) @ sd[p + "mlp.gate_proj.weight"].T
        gate_m, val = m.chunk(2, -1)
        h = h + (F.silu(gate_m) * val) @ sd[p + "mlp.down_proj.weight"].T
    return _rms(h, sd["norm.weight"]).mean(1) @ sd["head.weight"].T + sd["head.bias"]


# -- tests ---------------------------------------------------------------------------


def test_every_plain_and_swin_model_names_its_official_source():
    for name, source in HUB_SOURCES.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_id == source["hf_hub_id"] and cfg.hf_hub_id
        assert cfg.hf_hub_filename == source.get("hf_hub_filename")
    assert HUB_SOURCES["omni_deit_tiny_patch16_224"]["hf_hub_id"] == timm.models.get_pretrained_cfg(
        "deit_tiny_patch16_224"
    ).hf_hub_id


def test_vig_tiny_official_layout_loads_strictly_and_matches_the_official_forward(tmp_path):
    torch.manual_seed(0)
    full = official_vig_state_dict(depth=12)
    strict = timm.create_model("vig_tiny_patch16_224").eval()
    from omniseq.backbones._pretrained import vig_checkpoint_filter_fn

    strict.load_state_dict(vig_checkpoint_filter_fn(dict(full), strict), strict=True)
    # Two blocks, another input size (64 px: a 4x4 grid, the 14x14 position embedding resized).
    short = {k: v for k, v in full.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < 2}
    path = _save(short, tmp_path / "vig_t.pth", config={"MODEL": {"TYPE": "vig"}})
    ours = _from_file("vig_tiny_patch16_224", path, depth=2, img_size=64)
    assert ours.pos_embed.shape == (1, 16, 192)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = official_vig_forward(short, x, depth=2)
        got = ours(x)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_vim_tiny_official_layout_loads_strictly_with_the_class_token_kept_in_the_middle(tmp_path):
    torch.manual_seed(0)
    official = official_vim_state_dict()
    path = _save(official, tmp_path / "vim_t_midclstok_76p1acc.pth", args=argparse.Namespace(model="vim_tiny"))
    same = _from_file("vim_tiny_patch16_224", path)
    torch.testing.assert_close(same.blocks[23].mixer.A_b_log, official["layers.23.mixer.A_b_log"])
    torch.testing.assert_close(same.norm.weight, official["norm_f.weight"])
    torch.testing.assert_close(same.pos_embed, official["pos_embed"])
    bigger = _from_file("vim_tiny_patch16_224", path, img_size=320, num_classes=5)
    assert bigger.pos_embed.shape == (1, 401, 192)
    # The class token's embedding sits in the middle of the grid tokens before and after.
    torch.testing.assert_close(bigger.pos_embed[:, 200], official["pos_embed"][:, 98])
    assert bigger.head.weight.shape == (5, 192)


def test_deit_tiny_timm_weights_give_timm_logits_at_224_and_at_320(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224").eval()
    _perturb_vectors(reference)
    path = _save(reference.state_dict(), tmp_path / "deit.pth")
    for size in (224, 320):
        timm_model = timm.create_model(
            "deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=path), img_size=size
        ).eval()
        ours = _from_file("omni_deit_tiny_patch16_224", path, img_size=size)
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), timm_model(x), rtol=1e-4, atol=1e-4)


def test_swin_tiny_timm_and_microsoft_layouts_give_timm_logits_also_with_larger_windows(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224").eval()
    _perturb_vectors(reference)
    state = reference.state_dict()
    timm_path = _save(state, tmp_path / "swin_timm.pth")
    # Microsoft's release: downsample at the end of each stage, classifier named ``head``.
    microsoft = {}
    for key, value in state.items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        microsoft[key.replace("head.fc.", "head.")] = value
    ms_path = _save(microsoft, tmp_path / "swin_tiny_patch4_window7_224.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        for path in (timm_path, ms_path):
            torch.testing.assert_close(_from_file("omni_swin_tiny_patch4_window7_224", path)(x), expected,
                                       rtol=1e-4, atol=1e-4)
    # 14x14 windows at 448 px: relative-position tables resized as timm resizes them.
    wide = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=True, pretrained_cfg_overlay=dict(file=timm_path),
        img_size=448, window_size=14,
    ).eval()
    ours = _from_file("omni_swin_tiny_patch4_window7_224", ms_path, window_size=14)
    assert ours.layers[0].blocks[0].mixer.relative_position_bias_table.shape == (27 * 27, 3)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), wide(x), rtol=1e-4, atol=1e-4)


def test_swin_filter_keeps_tables_of_modules_it_does_not_know():
    model = timm.create_model("omni_swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2))
    table = torch.randn(13 * 13, 3)
    out = swin_checkpoint_filter_fn({"layers.9.blocks.0.attn.relative_position_bias_table": table}, model)
    assert out["layers.9.blocks.0.mixer.relative_position_bias_table"] is table


def test_segmentation_backbone_starts_from_a_local_official_file(tmp_path):
    from omniseq.domains.vision import SegmentationNet

    torch.manual_seed(0)
    official = official_vig_state_dict(depth=2)
    path = _save(official, tmp_path / "vig_t.pth")
    options = dict(depth=2, img_size=64, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    net = SegmentationNet("vig_tiny_patch16_224", num_classes=3, in_chans=1, backbone_options=options)
    encoder = net.encoder.model
    torch.testing.assert_close(encoder.blocks[1].mixer.qkv_proj.weight, official["blocks.1.attn.qkv_proj.weight"])
    # One input channel: timm sums the RGB filters of the first conv.
    torch.testing.assert_close(
        encoder.patch_embed.proj[0].weight, official["patch_embed.proj.0.weight"].sum(1, keepdim=True)
    )
    assert net(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_dynamic_img_size_is_accepted_and_volume_data_config_has_its_channels():
    for name in ("omni_deit_tiny_patch16_224", "vig_tiny_patch16_224", "omni_swin_tiny_patch4_window7_224"):
        model = timm.create_model(name, dynamic_img_size=True, num_classes=3, depth=1) if "swin" not in name else \
            timm.create_model(name, dynamic_img_size=True, num_classes=3, depths=(1, 1, 1, 1))
        assert model(torch.randn(1, 3, 96, 160)).shape == (1, 3)
    cfg = timm.data.resolve_model_data_config(timm.create_model("swin3d_unetr_tiny", in_chans=2, img_size=64))
    assert cfg["input_size"] == (2, 64, 64, 64)
    assert len(cfg["mean"]) == len(cfg["std"]) == 2
