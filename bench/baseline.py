"""`python -m bench.baseline`: the script; the logic lives in the library (evaluation.baseline)."""

import sys

from evaluation.baseline import main

if __name__ == "__main__":
    sys.exit(main())
