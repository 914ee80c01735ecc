"""SquarePlus forward+backward on 10^7 float32 beside torch softplus, the torch-expression
SquarePlus and a copy of the same bytes. Run: ``python benches/bench_squareplus.py``."""

from kexue.benchmarks import squareplus

if __name__ == "__main__":
    squareplus.run()
