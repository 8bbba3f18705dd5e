"""`python -m tlbench.predict`; the API `load_model`, `load_zero_shot`, `predict` (in serve/predict.py)."""

import sys

from tlbench.serve.predict import load_model, load_zero_shot, main, predict

__all__ = ["load_model", "load_zero_shot", "main", "predict"]

if __name__ == "__main__":
    sys.exit(main())
