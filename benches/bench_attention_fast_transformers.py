"""Causal linear attention: kexue vs fast-transformers' C++ CPU causal-product kernel.

fast-transformers is not a kexue dependency and its code is never committed here: fetch the
repository (idiap/fast-transformers) anywhere, and this script compiles
``fast_transformers/causal_product/causal_product_cpu.cpp`` with ``-O3 -fopenmp`` into a
scratch directory (no ninja needed), then times both in this process:

    python benches/bench_attention_fast_transformers.py --source /path/to/fast-transformers

fast-transformers' kernel computes the unnormalised product only; its Python layer then
normalises with ``einsum(Q, K.cumsum)`` (timed here as "fast-transformers + normaliser").
kexue computes numerator and denominator in one pass; it is also timed with the FAVOR+ feature
map (m = 64) applied inside that pass against fast-transformers' kernel on given features.
B = 1, H = 8, D = M = Dv = 64, float32.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils import cpp_extension

from kexue import get_num_threads
from kexue.attention import linear_attention, orthogonal_random_matrix
from kexue.benchmarks import compare

NAME = "ft_causal_product_cpu"


def build(source: Path, out_dir: Path) -> object:
    cpp = source / "fast_transformers" / "causal_product" / "causal_product_cpu.cpp"
    if not cpp.exists():
        cpp = source  # a path to the .cpp file itself
    so = out_dir / (NAME + sysconfig.get_config_var("EXT_SUFFIX"))
    if not so.exists():
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        includes = [f"-I{p}" for p in cpp_extension.include_paths()]
        includes.append(f"-I{sysconfig.get_paths()['include']}")
        libdir = Path(torch.__file__).parent / "lib"
        cmd = [
            "c++", "-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++20", str(cpp), *includes,
            f"-DTORCH_EXTENSION_NAME={NAME}", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-L{libdir}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python",
            f"-Wl,-rpath,{libdir}", "-o", str(so),
        ]  # fmt: skip
        print("compiling", cpp.name, "...", flush=True)
        subprocess.run(cmd, check=True)
    spec = importlib.util.spec_from_file_location(NAME, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_size(ft: object, n: int, repeat: int, gen: torch.Generator) -> None:
    threads = f"kexue {get_num_threads()} threads, torch/OpenMP {torch.get_num_threads()} threads"
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen) for _ in range(3))
    phq, phk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    shape = f"B=1 H=8 N={n} D=M=Dv=64 float32, {threads}"

    def ft_forward(normalise: bool) -> torch.Tensor:
        out = torch.zeros_like(v)
        ft.causal_dot_product(phq, phk, v, out)
        if normalise:
            out = out / (torch.einsum("nhli,nhli->nhl", phq, phk.cumsum(2)) + 1e-6)[..., None]
        return out

    ours = linear_attention(phq, phk, v, causal=True, feature_map="identity", eps=1e-6)
    gap = (ours - ft_forward(True)).abs().max().item() / ours.abs().max().item()
    print(f"max |kexue - fast-transformers| / max |o| = {gap:.1e}")
    with torch.no_grad():
        compare(
            "causal forward (features given)",
            shape,
            lambda: linear_attention(phq, phk, v, causal=True, feature_map="identity"),
            {
                "fast-transformers kernel (unnormalised)": lambda: ft_forward(False),
                "fast-transformers + normaliser": lambda: ft_forward(True),
            },
            repeat=repeat,
        )
        w = orthogonal_random_matrix(64, 64, seed=0, dtype=np.float32)
        compare(
            "causal forward incl. FAVOR+ features m=64 (ours), features given (fast-transformers)",
            shape,
            lambda: linear_attention(q, k, v, causal=True, projection=w),
            {"fast-transformers kernel (unnormalised)": lambda: ft_forward(False)},
            repeat=repeat,
        )
    g = torch.randn_like(v)

    def ft_backward() -> None:
        grads = [torch.zeros_like(x) for x in (phq, phk, v)]
        ft.causal_dot_backward(phq, phk, v, g, *grads)

    def ours_backward() -> None:
        a, b, c = (x.detach().requires_grad_() for x in (phq, phk, v))
        linear_attention(a, b, c, causal=True, feature_map="identity").backward(g)

    compare(
        "causal forward+backward (ours) vs backward alone (fast-transformers)",
        shape,
        ours_backward,
        {"fast-transformers causal_dot_backward": ft_backward},
        repeat=max(3, repeat // 2),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, type=Path, help="fast-transformers checkout")
    p.add_argument("--build-dir", type=Path, default=Path(tempfile.gettempdir()) / "kexue-ft")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    args.build_dir.mkdir(parents=True, exist_ok=True)
    ft = build(args.source, args.build_dir)

    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        bench_size(ft, n, args.repeat, gen)


if __name__ == "__main__":
    sys.exit(main())
