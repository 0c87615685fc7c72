"""Pure tensor functions: the math of sequence mixing.

Every op takes ``backend="auto"|"torch"|"triton"|"cpu"`` and has a loop reference
(``*_reference``) beside its fast form; the references are the test oracles.
``"cpu"`` is a compiled C kernel (``omniseq.kernels.cpu``), which the selective
scan has; ops without one run PyTorch.
Shapes are sequence-major, as in flash-linear-attention (see DESIGN.md).
"""

from omniseq.kernels._backend import resolve_backend
from omniseq.kernels.attention import attention, attention_reference
from omniseq.kernels.gla import (
    gated_linear_attention,
    gated_linear_attention_recurrent,
    gated_linear_attention_reference,
)
from omniseq.kernels.gla_bidirectional import (
    bidirectional_gated_linear_attention,
    bidirectional_gated_linear_attention_reference,
)
from omniseq.kernels.linear_scan import linear_scan, linear_scan_reference
from omniseq.kernels.selective_scan import selective_scan, selective_scan_reference
from omniseq.kernels.ssm_conv import (
    fft_conv,
    fft_conv_reference,
    ssm_conv_kernel,
    ssm_conv_kernel_reference,
)
from omniseq.kernels.window import (
    window_attention_mask,
    window_merge,
    window_partition,
)

__all__ = [
    "attention",
    "attention_reference",
    "bidirectional_gated_linear_attention",
    "bidirectional_gated_linear_attention_reference",
    "fft_conv",
    "fft_conv_reference",
    "gated_linear_attention",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_reference",
    "linear_scan",
    "linear_scan_reference",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "ssm_conv_kernel",
    "ssm_conv_kernel_reference",
    "window_attention_mask",
    "window_merge",
    "window_partition",
]
