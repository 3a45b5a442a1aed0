"""`python -m bench.plot`: the script; the logic lives in the library (evaluation.plot)."""

import sys

from evaluation.plot import main

if __name__ == "__main__":
    sys.exit(main())
