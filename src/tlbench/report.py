"""`python -m tlbench.report` (the code is in tlbench.analysis.report)."""

import sys

from tlbench.analysis.report import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
