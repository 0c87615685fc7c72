"""Where the official ImageNet weights of each vision model live, and the
``checkpoint_filter_fn`` of each layout that turns them into our parameter names.

Sources (timm ``pretrained_cfg``; ``pretrained=True`` downloads where the network allows,
``pretrained_cfg_overlay=dict(file=PATH)`` reads a local copy):

- DeiT-T/S, Swin-T: timm's own Hugging Face Hub weights (``timm/deit_tiny_patch16_224.fb_in1k``,
  ...), in timm's layout; the original Facebook/Microsoft files load too.
- Vim-T/S: hustvl/Vim's releases on the Hub (``hustvl/Vim-tiny-midclstok``, ``hustvl/Vim-small-midclstok``).
- ViG-T/S: hustvl/ViG's Hub repository (``hustvl/ViG``).

Every filter unwraps a training checkpoint (``model`` / ``state_dict`` entries), drops
derived buffers, renames keys, and resizes what depends on the input size: the
learned position embedding (bicubic, class token kept, in the middle for Vim) and
Swin's relative-position bias tables when the window differs.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from timm.layers import resize_rel_pos_bias_table
from torch import nn

__all__ = [
    "HUB_SOURCES",
    "check_pretrained_file",
    "pretrained_load_context",
    "deit_checkpoint_filter_fn",
    "swin_checkpoint_filter_fn",
    "vig_checkpoint_filter_fn",
    "vim_checkpoint_filter_fn",
]

# model name -> pretrained_cfg fields naming the official weights.
HUB_SOURCES: dict[str, dict[str, str]] = {
    "omni_deit_tiny_patch16_224": dict(
        hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
    ),
    "omni_deit_small_patch16_224": dict(
        hf_hub_id="timm/deit_small_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
    ),
    "omni_swin_tiny_patch4_window7_224": dict(
        hf_hub_id="timm/swin_tiny_patch4_window7_224.ms_in1k",
        url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
        license="mit",
    ),
    "vim_tiny_patch16_224": dict(
        hf_hub_id="hustvl/Vim-tiny-midclstok", hf_hub_filename="vim_t_midclstok_76p1acc.pth"
    ),
    "vim_small_patch16_224": dict(
        hf_hub_id="hustvl/Vim-small-midclstok", hf_hub_filename="vim_s_midclstok_80p5acc.pth"
    ),
    # hustvl/ViG's README links the repository, not the file names: these follow its
    # configs (vig-t / vig-s) and could not be checked offline (see README, Known gaps).
    "vig_tiny_patch16_224": dict(hf_hub_id="hustvl/ViG", hf_hub_filename="vig_tiny.pth", license="mit"),
    "vig_small_patch16_224": dict(hf_hub_id="hustvl/ViG", hf_hub_filename="vig_small.pth", license="mit"),
}

_DERIVED_BUFFERS = re.compile(r"(relative_position_index|attn_mask)$")
_ATTN_TO_MIXER = (r"\.attn\.", ".mixer.")
_VIM_RENAMES = ((r"^layers\.(\d+)\.(norm|mixer)\.", r"blocks.\1.\2."), (r"^norm_f\.", "norm."))
_VIG_RENAMES = (
    (r"\.attn_norm\.", ".norm1."),
    (r"\.mlp_norm\.", ".norm2."),
    (r"\.mlp\.gate_proj\.", ".mlp.fc1."),
    (r"\.mlp\.down_proj\.", ".mlp.fc2."),
    _ATTN_TO_MIXER,
)


def unwrap_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The weights inside a training checkpoint (``model``, ``state_dict``, ``module``)."""
    for key in ("model", "state_dict", "module"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict):
            return unwrap_checkpoint(inner)
    return checkpoint


def _renamed(state_dict: dict, renames: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in unwrap_checkpoint(state_dict).items():
        if _DERIVED_BUFFERS.search(key):
            continue
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _resize_pos_embed(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    adapt = getattr(model, "adapt_checkpoint", None)
    return adapt(state_dict) if adapt is not None else state_dict


def deit_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """timm / facebookresearch DeiT (ViT) layout -> ours: ``attn`` is ``mixer``."""
    return _resize_pos_embed(_renamed(state_dict, (_ATTN_TO_MIXER,)), model)


def vim_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """hustvl/Vim layout -> ours: ``layers.i`` are ``blocks.i``, ``norm_f`` is ``norm``."""
    return _resize_pos_embed(_renamed(state_dict, _VIM_RENAMES), model)


def vig_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """hustvl/ViG layout -> ours: ``attn_norm``/``attn``/``mlp_norm`` are
    ``norm1``/``mixer``/``norm2``, the SwiGLU's ``gate_proj``/``down_proj`` are ``fc1``/``fc2``."""
    return _resize_pos_embed(_renamed(state_dict, _VIG_RENAMES), model)


def swin_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """timm or Microsoft Swin layout -> ours, relative-position tables resized to our windows.

    Microsoft's files downsample at the end of a stage and name the classifier
    ``head``; timm (and we) downsample at the start of the next stage, ``head.fc``.
    """
    state_dict = unwrap_checkpoint(state_dict)
    microsoft = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for key, value in _renamed(state_dict, (_ATTN_TO_MIXER,)).items():
        if microsoft:
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
            key = re.sub(r"^head\.", "head.fc.", key)
        if key.endswith("relative_position_bias_table"):
            value = _resize_table(model, key, value)
        out[key] = value
    return out


def _resize_table(model: nn.Module, key: str, table: torch.Tensor) -> torch.Tensor:
    try:
        mixer = model.get_submodule(key.rsplit(".", 1)[0])
    except AttributeError:
        return table  # not ours: load_state_dict will name the unexpected key
    target = mixer.relative_position_bias_table
    if table.shape == target.shape or len(mixer.window_size) != 2:
        return table
    with warnings.catch_warnings():  # timm's interpolation warns about its own internals
        warnings.simplefilter("ignore", UserWarning)
        return resize_rel_pos_bias_table(table, new_window_size=mixer.window_size, new_bias_shape=target.shape)


FILTERS: dict[str, Callable[[dict, nn.Module], dict[str, torch.Tensor]]] = {
    "deit": deit_checkpoint_filter_fn,
    "swin": swin_checkpoint_filter_fn,
    "vim": vim_checkpoint_filter_fn,
    "vig": vig_checkpoint_filter_fn,
}


def check_pretrained_file(variant: str, overlay: dict | None) -> None:
    """A local weights file that is not there: say so before timm does (with an empty message)."""
    path = (overlay or {}).get("file")
    if path and not Path(path).is_file():
        source = HUB_SOURCES.get(variant, {}).get("hf_hub_id", "the model's official release")
        raise FileNotFoundError(
            f"{variant}: pretrained_cfg_overlay file {str(path)!r} does not exist or is not a file; "
            f"download the official weights ({source}) and give their path, or use pretrained=False"
        )


@contextlib.contextmanager
def pretrained_load_context(pretrained: bool, variant: str = "") -> Iterator[None]:
    """While timm reads official weights (``weights_only=True`` throughout): hustvl/Vim's
    and DeiT's training checkpoints store their ``argparse.Namespace`` of settings
    beside the weights, a plain attribute bag that is safe to rebuild. Anything else
    that is not plain data is refused with the way out."""
    if not pretrained:
        yield
        return
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            yield
    except (pickle.UnpicklingError, RuntimeError) as error:
        if not isinstance(error, pickle.UnpicklingError) and "weights_only" not in str(error):
            raise
        raise RuntimeError(
            f"{variant}: the weights file holds objects besides tensors (e.g. a training config), which "
            "are not loaded (weights_only=True). Re-save only its weights (the 'model' entry) as "
            "safetensors or a plain state dict, in an environment where you trust the file, and "
            f"pass that file. ({str(error).splitlines()[0]})"
        ) from error
