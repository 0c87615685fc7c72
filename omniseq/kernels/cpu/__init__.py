"""Compiled CPU kernels: small C sources built on first use, called through ctypes.

Optional by construction: with no C compiler (or ``OMNISEQ_CPU_KERNELS=0``) every
op keeps its pure-PyTorch path, so installing omniseq never compiles anything.
"""

from omniseq.kernels.cpu._build import cpu_kernels_available, load_cpu_library

__all__ = ["cpu_kernels_available", "load_cpu_library"]
