"""The long fuzzing run, outside CI: ``tests/unit/test_fuzz.py`` with many more, freshly random, examples.

Usage (from the repository root)::

    python tests/fuzz_long.py                      # 2,000 random examples per target
    python tests/fuzz_long.py --examples 20000     # longer
    python tests/fuzz_long.py -k "iu or dicom"     # only some targets (extra arguments go to pytest)
    python tests/fuzz_long.py --derandomize        # the CI examples' sequence, just more of it

It only sets two environment variables that the suite reads and runs pytest:

- ``CXR_FUZZ_EXAMPLES=N``: examples per target (CI uses a few hundred, derandomized);
- ``CXR_FUZZ_RANDOM=1``: a fresh random seed each run, so repeated long runs explore different inputs.

With a long run the suite prints how many examples each target ran (``fuzz examples run: N  target``). On a
failure hypothesis prints the shrunk falsifying input and a ``@reproduce_failure(...)`` line: paste that
decorator on the test (next to ``@given``) to replay it, then turn the input into a plain regression test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per target (default 2000)")
    parser.add_argument("--derandomize", action="store_true", help="the fixed CI sequence instead of a random one")
    args, pytest_args = parser.parse_known_args(argv)
    env = dict(os.environ, CXR_FUZZ_EXAMPLES=str(args.examples))
    if args.derandomize:
        env.pop("CXR_FUZZ_RANDOM", None)
    else:
        env["CXR_FUZZ_RANDOM"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "unit" / "test_fuzz.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "-s",
        *pytest_args,
    ]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
