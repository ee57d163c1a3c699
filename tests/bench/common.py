"""What the benchmark drivers share (tests/bench/run, tests/bench/plugin).

Python 3 standard library only; imported from the drivers' own directory.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "target", "bench")
KERNELS_FILE = "/var/lib/apt/periodic/blksnap-kernels"


def say(msg):
    print(f"bench: {msg}", flush=True)


def resolve_abi(spec):
    """The installed kernel ABI that `spec` (6.1, 6.12 or a full ABI)
    names, per tests/setup.sh's list; None if there is none."""
    try:
        with open(KERNELS_FILE) as f:
            abis = [line.strip() for line in f if line.strip()]
    except OSError:
        return None
    return next((a for a in abis if a == spec or re.match(re.escape(spec) + r"\.\d", a)), None)
