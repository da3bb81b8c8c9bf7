"""``python -m cxr_core.train RUN_DIR [--resume]``: the process a detached job runs (or each torchrun rank)."""

from __future__ import annotations

import argparse
import sys

from cxr_core.distributed import init_distributed, shutdown_distributed
from cxr_core.errors import CxrError
from cxr_core.runs import RunDir
from cxr_core.train.config import read_run_config
from cxr_core.train.runner import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.train", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    dist = init_distributed()
    run = RunDir(args.run_dir)
    # A detached job's stderr *is* log.txt, where rank 0 already logs: echoing there wrote every line twice.
    # Echo only to a person's terminal.
    echo = sys.stderr.isatty()
    try:
        if read_run_config(run).cv and not args.resume:
            from cxr_core.train.crossval import run_crossval

            run_crossval(run, dist=dist, echo=echo)
        else:
            run_training(run, resume=args.resume, dist=dist, echo=echo)
    except CxrError as exc:
        if echo or not dist.is_main:  # rank 0 logged the failure into log.txt already
            print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
