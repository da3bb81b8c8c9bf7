"""`cxr-tui worklist`: the review order scripts get is the core's (and so the TUI's), reviewed studies left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cxr_core.eval import review_order
from cxr_core.predictions import Predictions
from cxr_core.store.reviews import ReviewStore
from cxr_tui.cli.main import app

LABELS = ["Effusion", "Mass"]


def _predictions(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    studies = [f"s{i:02d}" for i in range(12) for _ in range(2)]  # two images per study
    probs = rng.random((len(studies), 2)).astype(np.float32)
    preds = Predictions(LABELS, probs, studies, [f"{s}_{j}.png" for j, s in enumerate(studies)],
                        meta={"root": str(tmp_path / "root")})
    return preds.write(tmp_path / "preds.csv")


def test_worklist_order_is_the_cores_and_leaves_out_what_the_reader_reviewed(tmp_path: Path) -> None:
    path = _predictions(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["worklist", "--preds", str(path), "--order", "uncertain", "--json", "--limit", "0"])
    assert shown.exit_code == 0, shown.output
    order = [row["study"] for row in json.loads(shown.output)["worklist"]]
    preds = Predictions.read(path)
    studies = list(dict.fromkeys(preds.study))
    assert order == [s for s, _ in review_order(studies, preds.study_scores(studies), LABELS, {}, "uncertain")]
    db = tmp_path / "reviews.sqlite"
    with ReviewStore(db) as store:
        store.record(tmp_path / "root", order[0], "Mass", "reject", reviewer="ana")
    left = runner.invoke(app, ["worklist", "--preds", str(path), "--unreviewed", "--reader", "ana", "--db", str(db),
                               "--root", str(tmp_path / "root"), "--json", "--limit", "3"])
    assert [row["study"] for row in json.loads(left.output)["worklist"]] == order[1:4]
    bad = runner.invoke(app, ["worklist", "--preds", str(path), "--order", "random"])
    assert bad.exit_code == 1 or "random" in (bad.output + str(bad.exception))
