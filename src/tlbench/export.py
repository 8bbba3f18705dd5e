"""`python -m tlbench.export` (the code is in tlbench.serve.export)."""

import sys

from tlbench.serve.export import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
