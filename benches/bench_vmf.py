"""vMF sampling beside scipy.stats.vonmises_fisher (shared and per-row mu), ratios printed.
Run: ``python benches/bench_vmf.py [size]``."""

import sys

from kexue.benchmarks import vmf

if __name__ == "__main__":
    vmf.run(int(sys.argv[1]) if len(sys.argv) > 1 else None)
