"""Bad pretrained-weights files: a clear error that names the model, the file and the fix."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch

import omniseq  # noqa: F401  registers the models


def test_missing_local_weights_file_names_it_and_the_official_source(tmp_path):
    missing = tmp_path / "vig_tiny.pth"
    with pytest.raises(FileNotFoundError, match=r"vig_tiny_patch16_224: pretrained_cfg_overlay file .*vig_tiny\.pth.*\(hustvl/ViG\)"):
        timm.create_model("vig_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_weights_file_with_code_objects_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "with_config.pth"
    torch.save({"model": {}, "config": argparse.ArgumentParser}, path)
    with pytest.raises(RuntimeError, match=r"vim_tiny_patch16_224: the weights file holds objects besides tensors.*Re-save only"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_official_layout_with_a_missing_block_fails_strictly(tmp_path):
    model = timm.create_model("omni_deit_tiny_patch16_224", depth=2)
    state = {k.replace(".mixer.", ".attn."): v for k, v in model.state_dict().items() if "blocks.1." not in k}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*blocks\.1\.mixer\.qkv\.weight"):
        timm.create_model("omni_deit_tiny_patch16_224", depth=2, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
