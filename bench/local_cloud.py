"""`python -m bench.local_cloud`: the script; the logic lives in the harness (testkit.local_cloud)."""

import sys

from testkit.local_cloud import main

if __name__ == "__main__":
    sys.exit(main())
