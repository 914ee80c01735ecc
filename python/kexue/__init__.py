"""kexue: Rust-accelerated ML kernels with numpy and torch front ends.

>>> import kexue
>>> kexue.set_num_threads(2)
>>> kexue.get_num_threads()
2
>>> kexue.set_num_threads(0)  # back to the default (RAYON_NUM_THREADS or all cores)
"""

from __future__ import annotations

from . import _native
from ._dispatch import check_int, torch_fallback

__version__: str = _native.__version__

__all__ = [
    "__version__",
    "get_num_threads",
    "set_num_threads",
    "simd_road",
    "torch_fallback",
]


MAX_THREADS = 1 << 12  # far beyond any machine; more would exhaust the process's threads


def set_num_threads(n: int) -> None:
    """Sizes the thread pool every kexue kernel runs in; ``0`` restores the default
    (``RAYON_NUM_THREADS`` if set, else one thread per core).

    >>> import kexue
    >>> kexue.set_num_threads(1)
    >>> kexue.get_num_threads()
    1
    >>> kexue.set_num_threads(0)
    """
    _native.set_num_threads(check_int(n, "n", low=0, high=MAX_THREADS))


def get_num_threads() -> int:
    """Number of threads a kernel started now would use.

    >>> import kexue
    >>> kexue.get_num_threads() >= 1
    True
    """
    return _native.get_num_threads()


def simd_road() -> str:
    """The SIMD road the kernels run on: ``"avx512"``, ``"avx2"`` or ``"portable"`` on
    x86-64, ``"neon"`` or ``"portable"`` on aarch64. It is the widest the CPU has unless the
    environment variable ``KEXUE_SIMD`` names another (read once, at import; a value the CPU
    cannot run makes the import fail with a ValueError that lists the roads it has).

    >>> import kexue
    >>> kexue.simd_road() in ("avx512", "avx2", "neon", "portable")
    True
    """
    return _native.simd_road()
