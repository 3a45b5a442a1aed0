"""`python -m bench.hybrid_eval`: the script; the logic lives in the library (evaluation.hybrid_eval)."""

import sys

from evaluation.hybrid_eval import main

if __name__ == "__main__":
    sys.exit(main())
