"""Memory requests beyond the machine end in ``MemoryError`` naming the request, never in an
abort, a ``PanicException`` or the OOM killer.

Each case runs in a child process whose address space is capped with ``resource`` (so a
regression cannot take the test machine down) and reports what it raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

resource = pytest.importorskip("resource")

LIMIT = 3 << 30  # address space of the child: enough for numpy, kexue and rayon's threads

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import numpy as np
import kexue
from kexue import losses, vmf
from kexue.cgmh import generate
from kexue.lm import NgramLM

lm = NgramLM.build(["the cat sat on the mat", "a dog sat"] * 5, order=2, progress=False,
                   discount_fallback=True)
arpa = "{arpa}"
cases = {{
    "sample_vmf beyond the machine": lambda: vmf.sample_vmf(np.ones(64), 1.0, 80_000_000, seed=0),
    "sample_vmf beyond the limit": lambda: vmf.sample_vmf(np.ones(64), 1.0, 10_000_000, seed=0),
    "global_pointer_scores": lambda: losses.global_pointer_scores(
        np.ones((1, 300000, 1, 2), np.float32), np.ones((1, 300000, 1, 2), np.float32)),
    "generate fixed order": lambda: generate(["cat"], lm, n=2**40, order="fixed", steps=1),
    "generate free order": lambda: generate(["cat", "mat"], lm, n=2**40, steps=1),
    # each chain keeps up to n + 1 sentences: 10**7 chains keeping 201 states each
    "generate kept states": lambda: generate(["cat"], lm, n=10**7, steps=200),
    "vmf_sample_wood (the torch road's kernel)": lambda: kexue._native.vmf_sample_wood(
        64, np.ones(1), 10_000_000, 0, True),
    "lm_read_arpa of a lying header": lambda: kexue._native.lm_read_arpa(arpa),
}}
out = {{}}
for name, call in cases.items():
    try:
        call()
        out[name] = "returned"
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def run_child(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_native_requests_raise_memory_error_naming_them(tmp_path) -> None:
    arpa = tmp_path / "lying.arpa"  # a header announcing more bigrams than the file holds
    arpa.write_text("\\data\\\nngram 1=3\nngram 2=99999999\n\n\\1-grams:\n-1\t<s>\n-1\t</s>\n")
    got = run_child(CHILD.format(limit=LIMIT, arpa=arpa))
    kind, message = got.pop("lm_read_arpa of a lying header")
    assert kind == "ValueError" and "ngram 2=99999999 cannot be right" in message, message
    for name, (kind, message) in got.items():
        assert kind == "MemoryError", (name, kind, message)
        assert "cannot allocate" in message, (name, message)
    assert got["sample_vmf beyond the machine"][1].startswith("output: cannot allocate")
    assert got["generate fixed order"][1].startswith("n: cannot allocate")


@pytest.mark.torch
def test_torch_road_of_sample_vmf_raises_memory_error() -> None:
    got = run_child(
        """
        import json, torch
        from kexue.vmf import sample_vmf
        try:
            sample_vmf(torch.ones(64), torch.tensor(1.0), 80_000_000_000, seed=0)
            out = "returned"
        except BaseException as e:
            out = [type(e).__name__, str(e)]
        print(json.dumps({"torch": out}))
        """
    )
    kind, message = got["torch"]
    assert kind == "MemoryError" and message.startswith("n: cannot allocate"), got
