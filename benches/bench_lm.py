"""kexue.lm beside KenLM: equality with lmplz/query, build time, scoring speed, memory.

Needs KenLM's binaries (``lmplz``, ``query``; build github:kpu/kenlm with cmake in scratch
space) in ``$KENLM_BIN`` (default /tmp/kenlm/build/bin), the ``kenlm`` Python module, and the
corpora of /work/shared/data (``$KEXUE_DATA``). Run: ``python benches/bench_lm.py [--quick]``.

1. Equality, WikiText-2 valid → test and PTB valid → test, orders 3 and 5, with
   ``skip_symbols=True`` = ``lmplz --skip_symbols`` (``<unk>`` deleted from the training text,
   every test ``<unk>`` an OOV): ARPA entries vs lmplz's (max |Δ log10|), test perplexity vs
   ``query`` (including and excluding OOVs), and lmplz's ARPA loaded by kexue scored beside
   ``kenlm.Model.score`` (max |Δ| per sentence).
2. Build time on ~5M tokens (WikiText-2 valid+test repeated 11×; the repetition makes every
   count ≥ 11, so both sides use the fallback discounts, ``--discount_fallback``): lmplz -o 5
   (``-S 1G``) writing ARPA vs kexue build + ARPA write (same output), each in its own process
   (wall time, peak RSS).
3. Scoring all WikiText-2 test sentences: ``NgramLM.logprob`` (batched, parallel) vs a Python
   loop over ``kenlm.Model.score``, same process, same lmplz-built 5-gram.
4. Loaded-model memory: RSS growth of loading the 5M-token 5-gram (kexue binary, kexue from
   ARPA, kenlm from ARPA).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from kexue import get_num_threads, set_num_threads
from kexue.benchmarks import compare, header
from kexue.lm import NgramLM

KENLM_BIN = os.environ.get("KENLM_BIN", "/tmp/kenlm/build/bin")
DATA = os.environ.get("KEXUE_DATA", "/work/shared/data")
PAIRS = {
    "wikitext-2": ("wikitext-2/valid.txt", "wikitext-2/test.txt"),
    "ptb": ("ptb/ptb.valid.txt", "ptb/ptb.test.txt"),
}


def clean_and_read(path: str) -> str:
    """The text without a BOM and with a final newline (lmplz/query need both)."""
    text = open(path, encoding="utf-8-sig").read()
    return text if text.endswith("\n") else text + "\n"


def clean_copy(src: str, dst: str) -> str:
    with open(dst, "w", encoding="utf-8") as f:
        f.write(clean_and_read(src))
    return dst


def lmplz(order: int, src: str, dst: str, *extra: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        subprocess.run(
            [f"{KENLM_BIN}/lmplz", "-o", str(order), "-S", "1G", "--skip_symbols", *extra],
            stdin=fin,
            stdout=fout,
            stderr=subprocess.DEVNULL,
            check=True,
        )


def arpa_entries(path: str) -> dict[str, tuple[float, float]]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 2:
                out[fields[1]] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return out


def query_perplexities(arpa: str, text: str) -> tuple[float, float]:
    with open(text, "rb") as fin:
        out = subprocess.run(
            [f"{KENLM_BIN}/query", "-v", "summary", arpa],
            stdin=fin,
            capture_output=True,
            check=True,
        ).stdout.decode()
    incl = float(re.search(r"Perplexity including OOVs:\s*([\d.]+)", out).group(1))
    excl = float(re.search(r"Perplexity excluding OOVs:\s*([\d.]+)", out).group(1))
    return incl, excl


def our_perplexities(lm: NgramLM, lines: list[str]) -> tuple[float, float]:
    total = n = oov_total = oovs = 0.0
    for s in lines:
        for p, _, oov in lm.full_scores(s):
            total += p
            n += 1
            if oov:
                oov_total += p
                oovs += 1
    return 10 ** (-total / n), 10 ** (-(total - oov_total) / (n - oovs))


def equality(tmp: str, orders: list[int]) -> None:
    import kenlm

    print("== 1. equality with lmplz + query (skip_symbols=True = lmplz --skip_symbols)")
    for name, (train, test) in PAIRS.items():
        train_f = clean_copy(os.path.join(DATA, train), os.path.join(tmp, f"{name}.train"))
        test_f = clean_copy(os.path.join(DATA, test), os.path.join(tmp, f"{name}.test"))
        lines = open(test_f, encoding="utf-8").read().splitlines()
        for order in orders:
            ref_arpa = os.path.join(tmp, f"{name}.{order}.arpa")
            lmplz(order, train_f, ref_arpa)
            ours = NgramLM.build(
                train_f, order=order, skip_symbols=True, backward=False, progress=False
            )
            our_arpa = os.path.join(tmp, f"{name}.{order}.ours.arpa")
            ours.save_arpa(our_arpa)
            a, b = arpa_entries(our_arpa), arpa_entries(ref_arpa)
            same_keys = a.keys() == b.keys()
            dp = max(abs(a[k][0] - b[k][0]) for k in b if k in a)
            db = max(abs(a[k][1] - b[k][1]) for k in b if k in a)
            q_in, q_ex = query_perplexities(ref_arpa, test_f)
            o_in, o_ex = our_perplexities(ours, lines)
            assert abs(ours.perplexity(lines) - o_in) < 1e-6 * o_in
            ken = kenlm.Model(ref_arpa)
            loaded = NgramLM.load_arpa(ref_arpa)
            d_sent = max(abs(loaded.score(s) - ken.score(s)) for s in lines)
            counted = NgramLM.build(train_f, order=order, backward=False, progress=False)
            print(
                f"{name} order {order}: {len(b)} n-grams, same set {same_keys}, "
                f"max |Δ log10 p| {dp:.1e}, max |Δ log10 backoff| {db:.1e}"
            )
            print(
                f"    test ppl incl. OOVs: kexue {o_in:.4f}  query {q_in:.4f}  "
                f"(Δ {100 * (o_in / q_in - 1):+.4f}%);  excl. OOVs: kexue {o_ex:.4f}  "
                f"query {q_ex:.4f}  (Δ {100 * (o_ex / q_ex - 1):+.4f}%)"
            )
            print(
                f"    lmplz ARPA in kexue vs kenlm.Model.score, {len(lines)} sentences: "
                f"max |Δ| {d_sent:.1e};  <unk> counted as a word (default): "
                f"test ppl {counted.perplexity(lines):.2f}"
            )


def run_measured(code: str) -> tuple[float, float, str]:
    """Runs Python ``code`` in a fresh process: (wall seconds, peak RSS MiB, its stdout).

    The peak is the process's VmHWM (Linux), which exec resets; ``ru_maxrss`` would carry
    over the parent's peak through fork."""
    wrapper = (
        "import time\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n"
        "t = time.perf_counter()\n"
        f"{code}\n"
        "dt = time.perf_counter() - t\n"
        "print(f'@@ {dt} {hwm()}')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, check=True, text=True
    ).stdout
    m = re.search(r"@@ (\S+) (\S+)", out)
    return float(m.group(1)), float(m.group(2)) / 1024, out


def run_lmplz_measured(order: int, src: str, dst: str) -> tuple[float, float]:
    code = (
        "import resource, subprocess\n"
        f"fin = open({src!r}, 'rb'); fout = open({dst!r}, 'wb')\n"
        f"subprocess.run([{KENLM_BIN + '/lmplz'!r}, '-o', '{order}', '-S', '1G', "
        "'--skip_symbols', '--discount_fallback'], stdin=fin, stdout=fout, "
        "stderr=subprocess.DEVNULL, check=True)\n"
        "t_end = time.perf_counter()\n"
        "print(f'@@child {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')"
    )
    wall, _, out = run_measured(code)
    return wall, float(re.search(r"@@child (\S+)", out).group(1)) / 1024


def build_bench(tmp: str, repeat: int) -> tuple[str, str]:
    big = os.path.join(tmp, "big.txt")
    text = clean_and_read(os.path.join(DATA, "wikitext-2/valid.txt")) + clean_and_read(
        os.path.join(DATA, "wikitext-2/test.txt")
    )
    with open(big, "w", encoding="utf-8") as f:
        f.write(text * 11)
    tokens = len(text.split()) * 11
    print(
        f"\n== 2. build, order 5, {tokens / 1e6:.2f}M tokens "
        "(WikiText-2 valid+test repeated 11x; fallback discounts on both sides), "
        f"{os.cpu_count()} cores, median of {repeat}"
    )
    ref_arpa, our_arpa = os.path.join(tmp, "big.lmplz.arpa"), os.path.join(tmp, "big.ours.arpa")
    our_bin = os.path.join(tmp, "big.ours.kxlm")
    build = (
        "from kexue.lm import NgramLM\n"
        f"lm = NgramLM.build({big!r}, order=5, skip_symbols=True, discount_fallback=True, "
        "progress=False, backward={back})\n"
    )
    runs = {
        "lmplz -o 5 -> ARPA": lambda: run_lmplz_measured(5, big, ref_arpa),
        "kexue build -> ARPA": lambda: run_measured(
            build.format(back=False) + f"lm.save_arpa({our_arpa!r})"
        )[:2],
        "kexue build -> binary": lambda: run_measured(
            build.format(back=False) + f"lm.save({our_bin + '.fwd'!r})"
        )[:2],
        "kexue build fwd+bwd -> binary": lambda: run_measured(
            build.format(back=True) + f"lm.save({our_bin!r})"
        )[:2],
    }
    results = {}
    for name, fn in runs.items():
        measured = [fn() for _ in range(repeat)]
        results[name] = (float(np.median([m[0] for m in measured])), max(m[1] for m in measured))
    base_t, base_m = results["lmplz -o 5 -> ARPA"]
    for name, (t, mem) in results.items():
        print(
            f"    {name:<32} {t:7.2f} s  (ours/lmplz {t / base_t:5.2f})   "
            f"peak RSS {mem:7.1f} MiB (ours/lmplz {mem / base_m:5.2f})"
        )
    return ref_arpa, our_bin + ".fwd"


def scoring_bench(tmp: str, repeat: int) -> None:
    import kenlm

    train = clean_copy(os.path.join(DATA, "wikitext-2/valid.txt"), os.path.join(tmp, "s.train"))
    arpa = os.path.join(tmp, "s.arpa")
    lmplz(5, train, arpa)
    lines = clean_and_read(os.path.join(DATA, "wikitext-2/test.txt")).splitlines()
    ken = kenlm.Model(arpa)
    ours = NgramLM.load_arpa(arpa)
    np.testing.assert_allclose(
        ours.logprob(lines) / np.log(10), [ken.score(s) for s in lines], atol=1e-3
    )
    tokens = sum(len(s.split()) + 1 for s in lines)
    print(
        f"\n== 3. scoring all WikiText-2 test sentences ({len(lines)} lines, {tokens} tokens "
        "with </s>), lmplz 5-gram of WikiText-2 valid, same process"
    )
    peers = {"python loop over kenlm.Model.score": lambda: [ken.score(s) for s in lines]}
    compare(
        f"NgramLM.logprob, {get_num_threads()} threads",
        f"{len(lines)} sentences",
        lambda: ours.logprob(lines),
        peers,
        repeat=repeat,
    )
    set_num_threads(1)
    try:
        # CPU time is what a loaded machine distorts least: ours runs in one pool thread.
        cpu = {
            name: cpu_time(fn, repeat)
            for name, fn in [("kexue", lambda: ours.logprob(lines)), *peers.items()]
        }
        ratio = cpu["kexue"] / cpu["python loop over kenlm.Model.score"]
        print(
            f"CPU time, 1 thread: kexue {cpu['kexue'] * 1e3:.2f} ms, kenlm loop "
            f"{cpu['python loop over kenlm.Model.score'] * 1e3:.2f} ms   ours/peer = {ratio:5.2f}"
        )
        compare(
            "NgramLM.logprob, 1 thread",
            f"{len(lines)} sentences",
            lambda: ours.logprob(lines),
            peers,
            repeat=repeat,
        )
    finally:
        set_num_threads(0)


def cpu_time(fn, repeat: int) -> float:
    """Median process CPU seconds of ``fn()``."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times))


def memory_bench(ref_arpa: str, our_bin: str) -> None:
    print("\n== 4. loaded 5-gram (5M-token build): RSS growth of the load")
    base = "import numpy, kenlm\nfrom kexue.lm import NgramLM\n"
    cases = {
        "kexue binary (NgramLM.load)": f"m = NgramLM.load({our_bin!r})",
        "kexue from ARPA (NgramLM.load_arpa)": f"m = NgramLM.load_arpa({ref_arpa!r})",
        "kenlm.Model(ARPA) (probing)": f"m = kenlm.Model({ref_arpa!r})",
    }
    _, empty, _ = run_measured(base)
    for name, code in cases.items():
        t, mem, _ = run_measured(base + code)
        print(f"    {name:<38} load {t:6.2f} s   RSS +{mem - empty:7.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="order 3 only, one build run")
    args = parser.parse_args()
    repeat = 1 if args.quick else 3
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        equality(tmp, [3] if args.quick else [3, 5])
        ref_arpa, our_bin = build_bench(tmp, repeat)
        scoring_bench(tmp, 3 if args.quick else 7)
        memory_bench(ref_arpa, our_bin)
        print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
