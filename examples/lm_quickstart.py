"""kexue.lm in one page: build a 5-gram (and its backward twin), query it, save it, and read
the same file with the ``kenlm`` module.

Run: ``python examples/lm_quickstart.py [TRAIN.txt [TEST.txt]]`` (defaults: the WikiText-2
validation/test files of the project's data folder, if present).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from kexue.lm import NgramLM

DATA = os.environ.get("KEXUE_DATA", "/work/shared/data")


def main() -> None:
    train = sys.argv[1] if len(sys.argv) > 1 else os.path.join(DATA, "wikitext-2/valid.txt")
    test = sys.argv[2] if len(sys.argv) > 2 else os.path.join(DATA, "wikitext-2/test.txt")
    lm = NgramLM.build(train, order=5)  # forward + backward, <unk> counted as a word
    print(lm)
    lines = open(test, encoding="utf-8-sig").read().splitlines()
    print(f"test perplexity {lm.perplexity(lines):.2f} over {len(lines)} lines")

    sentence = "the game was released in japan"
    print("ln p(sentence)     ", lm.logprob(sentence))
    print("log10, as kenlm    ", lm.score(sentence))
    print("per token (ln)     ", np.round(lm.token_logprobs(sentence), 3))
    backward = " ".join(reversed(sentence.split()))
    print("backward model (ln)", lm.reverse.logprob(backward))

    logp = lm.next_logprobs("the game was")
    best = np.argsort(logp)[::-1][:5]
    print("after 'the game was':", [(lm.vocab[i], round(float(np.exp(logp[i])), 4)) for i in best])
    # Words outside the vocabulary score as <unk> (here a frequent word): filter by lm.vocab.
    print("candidates:", lm.next_logprobs("the game was", ["released", "cancelled", "of"]))

    with tempfile.TemporaryDirectory() as tmp:
        lm.save(os.path.join(tmp, "wt2.kxlm"))  # binary, both directions
        lm.save_arpa(os.path.join(tmp, "wt2.arpa"))  # KenLM/SRILM text format
        again = NgramLM.load(os.path.join(tmp, "wt2.kxlm"))
        assert again.score(sentence) == lm.score(sentence)
        try:
            import kenlm
        except ImportError:
            return
        print("kenlm on our ARPA  ", kenlm.Model(os.path.join(tmp, "wt2.arpa")).score(sentence))


if __name__ == "__main__":
    main()
