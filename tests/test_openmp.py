"""A kernel runs with torch's OpenMP threads asleep, not spinning beside it (the binding's
``openmp`` module): measured as the CPU time the process spends per second of a kernel on one
kexue thread, in a child whose OpenMP threads spin whenever they wait
(``OMP_WAIT_POLICY=active``)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

CHILD = textwrap.dedent(
    """
    import json, resource, threading, time
    import numpy as np, torch
    import kexue
    from kexue.attention import linear_attention

    kexue.set_num_threads(1)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    q, k, v = (rng.random((1, 8, 8192, 64), dtype=np.float32) + 0.1 for _ in range(3))
    want = linear_attention(q, k, v, causal=True, feature_map="identity")

    def share():
        # CPU seconds of the whole process per second of the kernels
        torch.ones(1 << 20).sum()  # torch's team runs, then spins
        use = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        for _ in range(4):
            o = linear_attention(q, k, v, causal=True, feature_map="identity")
            assert np.array_equal(o, want)
        wall = time.perf_counter() - t
        now = resource.getrusage(resource.RUSAGE_SELF)
        return (now.ru_utime - use.ru_utime + now.ru_stime - use.ru_stime) / wall

    main = share()
    other = []  # from another thread, which leaves torch's team alone: it spins
    thread = threading.Thread(target=lambda: other.append(share()))
    thread.start()
    thread.join()
    print(json.dumps({"main": main, "other": other[0]}))
    """
)


def test_a_kernel_after_a_torch_operation_runs_with_the_openmp_team_asleep():
    env = {**os.environ, "OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    share = json.loads(out.stdout.splitlines()[-1])
    if share["other"] < 1.5:
        pytest.skip(f"torch's OpenMP threads do not spin here: {share}")
    # one kexue thread busy, the caller polling signals, torch's thread asleep
    assert share["main"] < 1.3, share


FORK = textwrap.dedent(
    """
    import os
    import numpy as np, torch
    from kexue.attention import linear_attention

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    q, k, v = (rng.random((1, 8, 512, 64), dtype=np.float32) + 0.1 for _ in range(3))
    want = linear_attention(q, k, v, causal=True, feature_map="identity")  # a region: a team
    torch.ones(1 << 20).sum()
    pid = os.fork()
    if pid == 0:  # the team's threads are not here: no region may wait for them
        o = linear_attention(q, k, v, causal=True, feature_map="identity")
        os._exit(0 if np.array_equal(o, want) else 1)
    print(os.waitpid(pid, 0)[1])
    """
)


def test_a_fork_child_runs_kernels_without_the_parents_openmp_team():
    out = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]
