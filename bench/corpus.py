"""`python -m bench.corpus`: the script; the logic lives in the library (evaluation.corpus)."""

import sys

from evaluation.corpus import main

if __name__ == "__main__":
    sys.exit(main())
