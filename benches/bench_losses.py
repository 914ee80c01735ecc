"""Multi-label CE (ZLPR) and its sparse form beside the torch ports of bert4keras, on
(4096, 10000) and GlobalPointer-shaped (16, 8, 256, 256) float32 scores, with peak memory.
Run: ``python benches/bench_losses.py`` (same as ``kexue bench losses``)."""

from kexue.benchmarks import losses

if __name__ == "__main__":
    losses.run()
