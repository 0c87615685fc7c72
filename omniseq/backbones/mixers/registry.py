"""The mixer contract and its registry.

``build_mixer(name, dim, **options)`` returns a module mapping ``(B, L, dim)`` to
``(B, L, dim)``; ``mixer(x, grid=None)`` receives the token grid for mixers that
need space. Causal mixers also offer ``init_state``/``step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

# Options a backbone passes to whichever mixer it builds; a mixer that has no use
# for one simply does not receive it. Any other unknown option is a user error.
CONTEXT_OPTIONS = frozenset({"causal", "seq_len", "num_heads"})

_MIXERS: dict[str, type[Mixer]] = {}


class Mixer(nn.Module):
    """Base class: shape checks and the optional recurrent interface."""

    def __init__(self, dim: int, causal: bool = False) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"{type(self).__name__}: dim must be positive, got {dim}")
        self.dim = dim
        self.causal = causal

    def __call__(self, *args, **kwargs):
        """Run the mixer in its weights' dtype and hand the result back in the input's.

        fp16/bf16/fp64 input to an fp32 mixer is cast (under autocast, autocast decides);
        integer, bool or complex input is refused with an error saying what to do. An
        empty batch gives an empty result.
        """
        x = args[0] if args else kwargs.get("x")
        target = self._run_dtype(x)
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] == 0:
            self.check_input(x)
            return x * 0  # an empty batch mixes to an empty batch (window/chunk maths would divide by 0)
        if target is None:
            return super().__call__(*args, **kwargs)
        if args:
            args = (x.to(target), *args[1:])
        else:
            kwargs = {**kwargs, "x": x.to(target)}
        out = super().__call__(*args, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

    def _run_dtype(self, x: object) -> torch.dtype | None:
        """The dtype to cast ``x`` to, or None to pass it as it is."""
        if not isinstance(x, torch.Tensor):
            return None
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects a floating point x, got {x.dtype}; convert it with x.float() "
                "(integer ids such as tokens go through an embedding first)"
            )
        if torch.is_autocast_enabled(x.device.type):
            return None
        weight = next((p for p in self.parameters() if p.is_floating_point()), None)
        return None if weight is None or weight.dtype == x.dtype else weight.dtype

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, L, {self.dim}), "
                f"got {tuple(x.shape)}"
            )

    def check_step_input(self, x_t: torch.Tensor) -> None:
        if x_t.ndim != 2 or x_t.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}.step expects x_t of shape (B, {self.dim}), "
                f"got {tuple(x_t.shape)}"
            )

    def require_causal(self) -> None:
        if not self.causal:
            raise RuntimeError(
                f"{type(self).__name__} was built with causal=False; step-by-step "
                "decoding needs build_mixer(..., causal=True)"
            )

    def init_state(self, batch_size: int, device=None, dtype=None):
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")

    def step(self, x_t: torch.Tensor, state):
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")


def register_mixer(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    def decorate(cls: type[Mixer]) -> type[Mixer]:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is already registered")
        _MIXERS[name] = cls
        return cls

    return decorate


def list_mixers() -> list[str]:
    return sorted(_MIXERS)


def get_mixer_class(name: str) -> type[Mixer]:
    try:
        return _MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; choose one of {list_mixers()}") from None


def build_mixer(name: str, dim: int, **options) -> Mixer:
    """Build a registered mixer; context options it does not take are dropped."""
    cls = get_mixer_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in options.items() if takes_any or k in params}
    unknown = set(options) - set(accepted) - CONTEXT_OPTIONS
    if unknown:
        allowed = sorted(k for k in params if k not in ("self", "dim"))
        raise TypeError(
            f"mixer {name!r} got unknown option(s) {sorted(unknown)}; it accepts {allowed}"
        )
    return cls(dim, **accepted)
