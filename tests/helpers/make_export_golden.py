"""Write ``tests/data/export_golden.npz``, the committed reference values of ``test_export_golden.py``.

    python tests/helpers/make_export_golden.py            # (re)write the file
    python tests/helpers/make_export_golden.py --check    # compare with the committed file, write nothing

The values are the PyTorch eager (CPU, fp32, one thread) probabilities of the export tests' fixture model (seeded
random weights, :func:`helpers.export.write_model_dir`) on ``golden_inputs_array()``: refined (k=3, 25 rounds)
and raw. Regenerate only when a change of the model's numerics is intended, and say so in the commit message.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as the test session runs (tests/conftest.py)
    sys.path.insert(0, str(TESTS))  # as pytest runs the tests: helpers and test modules importable
    from test_export_golden import GOLDEN_ATOL, GOLDEN_FILE, golden_inputs_array, input_fingerprint, reference_probs

    from helpers.export import TorchReference, write_model_dir

    x = golden_inputs_array()
    with tempfile.TemporaryDirectory(prefix="ifseg-golden-") as tmp:
        reference = TorchReference(write_model_dir(Path(tmp)))
        values = {**reference_probs(reference, x), "inputs_sum_sumsq": input_fingerprint(x)}
    if args.check:
        with np.load(GOLDEN_FILE) as f:
            worst = max(float(np.abs(values[k] - f[k]).max()) for k in ("refined", "raw"))
        print(f"max |difference| from {GOLDEN_FILE}: {worst:.3g} (tolerance {GOLDEN_ATOL})")
        return 0 if worst <= GOLDEN_ATOL else 1
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = GOLDEN_FILE.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **values)
    tmp.replace(GOLDEN_FILE)
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size} bytes; torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
