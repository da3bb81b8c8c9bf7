"""``python -m cxr_core.eval RUN --data ROOT [--split test]``: evaluate a run, as a detached job runs it.

What the TUI starts when a reviewer asks for a run's evaluation (it outlives the terminal, like training); the
same work as ``cxr-tui eval``, without the command-line front-end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_core.data.sources import SourceOptions
from cxr_core.errors import CxrError, error_text
from cxr_core.eval.evaluation import evaluate_run
from cxr_core.infer.engine import Predictor
from cxr_core.text import visible


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.eval", description=__doc__)
    parser.add_argument("model", help="run directory, run id or checkpoint file")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--format", default=None)
    parser.add_argument("--labels", default=None, type=Path, help="labels CSV for the folder layout")
    parser.add_argument("--out", default=None, type=Path)
    parser.add_argument("--thresholds", default=None, type=Path)
    parser.add_argument("--boxes", default=None, type=Path)
    parser.add_argument("--n-boot", default=1000, type=int)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.from_checkpoint(args.model, device=args.device)
        result = evaluate_run(predictor, args.data, split=args.split, fmt=args.format,
                              options=SourceOptions(labels_csv=args.labels), out=args.out, thresholds=args.thresholds,
                              boxes=args.boxes, n_boot=args.n_boot, seed=args.seed)
    except (CxrError, OSError) as exc:
        print(f"error: {visible(error_text(exc), lines=True)}", file=sys.stderr)
        return 1
    if result is not None:
        if result.same_split:
            print(f"warning: {result.same_split}")
        macro = result.metrics.get("auc_macro")
        print(visible(f"macro AUC {macro:.3f}" if macro is not None else "macro AUC —", lines=True))
        print(visible(f"report: {result.out / 'report.md'}", lines=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
