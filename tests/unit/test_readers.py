"""Agreement between readers: Fleiss' and Cohen's kappa checked against published values and scikit-learn, the
disagreements an adjudicator settles, and the commands that show them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from cxr_core.eval.readers import ALL, disagreements, fleiss_kappa, reader_agreement
from cxr_core.store.reviews import ReviewStore
from cxr_tui.cli.reviews import app

ROOT = "/data/demo"


def test_fleiss_kappa_matches_the_published_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa(np.array([[3, 0], [3, 0]])) is None  # one category only: undefined
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))


def _three_readers(store: ReviewStore, rng: np.random.Generator, n: int = 60) -> dict[str, list[bool]]:
    truth = rng.random(n) < 0.4
    calls = {}
    for reader, noise in (("ana", 0.1), ("bo", 0.2), ("cy", 0.3)):
        flips = rng.random(n) < noise
        calls[reader] = list(truth ^ flips)
        store.record_study(ROOT, "x", {}, reviewer=reader)  # nothing: an empty read stores nothing
        for i, call in enumerate(calls[reader]):
            store.record(ROOT, f"s{i}", "Effusion", "accept" if call else "reject", reviewer=reader)
    store.record(ROOT, "s0", "Mass", "uncertain", reviewer="ana")  # not a call: left out
    return calls


def test_pairwise_cohen_matches_scikit_learn_and_fleiss_pools_three(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "r.sqlite") as store:
        calls = _three_readers(store, np.random.default_rng(3))
        tables = reader_agreement(store.reviews(ROOT))
    effusion = tables["Effusion"]
    assert effusion.readers == ("ana", "bo", "cy") and effusion.fleiss_items == 60
    for (a, b), table in effusion.pairs.items():
        assert table.kappa == pytest.approx(cohen_kappa_score(calls[a], calls[b]))
    counts = np.array([[sum(calls[r][i] for r in calls), 3 - sum(calls[r][i] for r in calls)] for i in range(60)])
    assert effusion.fleiss == pytest.approx(fleiss_kappa(counts))
    split = sum(len({calls[r][i] for r in calls}) > 1 for i in range(60))
    assert effusion.disagreements == split
    assert set(tables) == {"Effusion", ALL}  # Mass had only an uncertain: no calls


def test_disagreements_list_exactly_the_split_calls_and_adjudication_settles_them(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "r.sqlite") as store:
        calls = _three_readers(store, np.random.default_rng(5), n=20)
        found = disagreements(store.reviews(ROOT))
        expected = sorted(f"s{i}" for i in range(20) if len({calls[r][i] for r in calls}) > 1)
        assert sorted(d.study for d in found) == expected and all(d.finding == "Effusion" for d in found)
        first = found[0]
        store.record(ROOT, first.study, "Effusion", "accept", reviewer="dr-adj", role="adjudicator")
        after = disagreements(store.reviews(ROOT))
        assert [d.adjudicated for d in after if d.study == first.study] == ["accept"]
        assert first.study not in {d.study for d in disagreements(store.reviews(ROOT), unsettled_only=True)}
        assert "dr-adj" not in reader_agreement(store.reviews(ROOT))["Effusion"].readers  # not a reader


def test_an_adjudicators_unsure_is_shown_but_settles_nothing(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "r.sqlite") as store:
        store.record(ROOT, "s1", "Effusion", "accept", reviewer="ana")
        store.record(ROOT, "s1", "Effusion", "reject", reviewer="bo")
        store.record(ROOT, "s1", "Effusion", "uncertain", reviewer="chief", role="adjudicator")
        (row,) = disagreements(store.reviews(ROOT))
        assert row.adjudicated == "uncertain" and row.adjudicated_text == "unsure" and not row.settled
        assert [d.study for d in disagreements(store.reviews(ROOT), unsettled_only=True)] == ["s1"]
        shown = CliRunner().invoke(app, ["disagreements", "--db", str(tmp_path / "r.sqlite")])
        assert shown.exit_code == 0 and "unsure" in shown.output, shown.output
        store.record(ROOT, "s1", "Effusion", "reject", reviewer="chief", role="adjudicator")  # then decided
        (row,) = disagreements(store.reviews(ROOT))
        assert row.adjudicated == "reject" and row.settled and row.adjudicated_text == "reject"
        assert disagreements(store.reviews(ROOT), unsettled_only=True) == []


def test_reviews_agreement_disagreements_and_adjudicate_commands(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        _three_readers(store, np.random.default_rng(7), n=30)
    runner = CliRunner()
    shown = runner.invoke(app, ["agreement", "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "Fleiss" in shown.output and "ana~bo" in shown.output
    data = json.loads(runner.invoke(app, ["agreement", "--db", str(db), "--json"]).output)
    assert data["readers"] == ["ana", "bo", "cy"] and data["findings"][-1]["finding"] == ALL
    listed = json.loads(runner.invoke(app, ["disagreements", "--db", str(db), "--json"]).output)
    assert listed and all(len(set(d["calls"].values())) == 2 for d in listed)
    study = listed[0]["study"]
    done = runner.invoke(app, ["adjudicate", "--db", str(db), "--root", ROOT, "--study", study,
                               "--finding", "Effusion", "--decision", "reject", "--reader", "chief"])
    assert done.exit_code == 0, done.output
    left = json.loads(runner.invoke(app, ["disagreements", "--db", str(db), "--json", "--unsettled"]).output)
    assert study not in {d["study"] for d in left} and len(left) == len(listed) - 1


def test_adjudicate_refuses_what_no_reader_decided(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        store.record(ROOT, "s1", "Effusion", "accept", reviewer="ana")
        store.record(ROOT, "s1", "Effusion", "reject", reviewer="bo")
    runner = CliRunner()

    def adjudicate(root: str, study: str, finding: str):
        return runner.invoke(app, ["adjudicate", "--db", str(db), "--root", root, "--study", study, "--finding",
                                   finding, "--decision", "accept", "--reader", "chief"])

    for root, study, finding, message in ((ROOT, "nosuch", "Effusion", "study nosuch has no readers' decisions"),
                                          ("/nope", "s1", "Effusion", "no reader has decided anything there"),
                                          (ROOT, "s1", "Dragon", "s1: no reader decided Dragon (decided: Effusion)")):
        result = adjudicate(root, study, finding)
        assert result.exit_code != 0 and message in str(result.exception), (message, result.exception)
    with ReviewStore(db) as store:
        assert not store.reviews(role="adjudicator")  # nothing stored by the refused ones
    assert adjudicate(ROOT, "s1", "Effusion").exit_code == 0
