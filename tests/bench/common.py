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


def print_rows(cols, lines):
    """A table: the column heads, a rule, the lines, each column as wide
    as its widest cell."""
    widths = [max(len(cols[i]), *(len(line[i]) for line in lines)) for i in range(len(cols))]
    print("  ".join(h.ljust(w) for h, w in zip(cols, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
