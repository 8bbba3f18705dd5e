"""`python -m tlbench.predict`, and the Python API `load_model`, `load_zero_shot`, `predict` (the code is in
tlbench.serve.predict)."""

import sys

from tlbench.serve.predict import load_model, load_zero_shot, main, predict

__all__ = ["load_model", "load_zero_shot", "main", "predict"]

if __name__ == "__main__":
    sys.exit(main())
