"""Reviewers' decisions as training labels: the policy, the overlay, and a run trained with --with-reviews."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from cxr_core.data.study import Study, StudyImage
from cxr_core.labels import LabelSpace
from cxr_core.train.reviewed_labels import consensus, current_decisions, overlay


@dataclass
class Action:
    id: int
    study: str
    finding: str
    decision: str
    reviewer: str
    role: str = "reader"
    kind: str = "decision"


SPACE = LabelSpace("t", ("Effusion", "Mass", "No Finding"), normal="No Finding")


def test_adjudicated_then_majority_then_latest() -> None:
    a, b, c = (Action(1, "s", "Mass", "accept", "ana"), Action(2, "s", "Mass", "reject", "bo"),
               Action(3, "s", "Mass", "reject", "cy"))
    assert consensus([a, b, c])[:2] == ("reject", "majority")
    assert consensus([a, b])[:2] == ("reject", "latest")  # a tie: the latest decision
    assert consensus([a])[:2] == ("accept", "single")
    judge = Action(4, "s", "Mass", "accept", "chief", role="adjudicator")
    assert consensus([a, b, c, judge])[:2] == ("accept", "adjudicated")


def test_only_each_readers_last_decision_up_to_the_mark_counts() -> None:
    actions = [Action(1, "s", "Mass", "accept", "ana"), Action(2, "s", "Mass", "reject", "ana"),
               Action(3, "s", "Mass", "accept", "ana"), Action(4, "s", "Mass", "clear", "bo")]
    assert [d.id for d in current_decisions(actions, upto=2)[("s", "Mass")]] == [2]
    assert [d.id for d in current_decisions(actions, upto=9)[("s", "Mass")]] == [3]  # bo's clear is no decision


def test_overlay_writes_states_masks_uncertain_and_never_touches_test() -> None:
    studies = [Study("s1", "p1", (StudyImage("s1.png"),), "000", split="train"),
               Study("s2", "p2", (StudyImage("s2.png"),), "100", split="train"),
               Study("s3", "p3", (StudyImage("s3.png"),), "000", split="test")]
    actions = [Action(1, "s1", "Mass", "accept", "ana"), Action(2, "s2", "Effusion", "uncertain", "ana"),
               Action(3, "s3", "Mass", "accept", "ana"), Action(4, "s1", "Bogus", "accept", "ana"),
               Action(5, "s1", "effusion", "reject", "ana")]
    out, summary = overlay(studies, SPACE, actions, upto=5)
    assert [s.labels for s in out] == ["000".replace("000", "010"), ".00", "000"]
    assert summary.labels == 3 and summary.changed == 2 and summary.studies == 2
    assert summary.test_left_out == 1 and summary.unknown_findings == ["Bogus"]
    assert summary.by_reader == {"ana": 3} and "action 5" in summary.line()


@pytest.mark.slow
def test_a_run_with_reviews_trains_on_them_and_records_where_they_came_from(tmp_path, phantom_set, cxr_home):
    from cxr_core.store.index import StudyIndex
    from cxr_core.store.reviews import ReviewStore
    from cxr_core.train.config import TrainConfig
    from cxr_core.train.jobs import create_run
    from cxr_core.train.runner import run_training

    with StudyIndex() as index:
        loaded = index.load(phantom_set)
    train = [s for s in loaded.studies if s.split == "train"][:5]
    test = [s for s in loaded.studies if s.split == "test"][:2]
    with ReviewStore() as store:
        for study in train:
            store.record_study(loaded.root, study.id, {"Mass": ("accept", None, None)}, reviewer="ana")
        for study in test:
            store.record(loaded.root, study.id, "Mass", "accept", reviewer="ana")
        store.record(loaded.root, train[0].id, "Mass", "reject", reviewer="chief", role="adjudicator")
    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=1, batch_size=16,
                         workers=0, with_reviews=True)
    run = create_run(config, tmp_path / "runs")
    with ReviewStore() as store:  # a decision after the run was created is not in its labels
        store.record(loaded.root, train[1].id, "Effusion", "accept", reviewer="bo")
    assert run_training(run) == "finished"
    record = json.loads((run.path / "reviews.json").read_text())
    assert record["labels"] == 5 and record["test_left_out"] == 2
    assert record["by_source"] == {"single": 4, "adjudicated": 1}
    assert "with_reviews = true" in run.config_path.read_text() and record["upto"] == 8
    from cxr_core.eval import evaluate_run
    from cxr_core.infer import Predictor, load_model

    evaluation = evaluate_run(Predictor(load_model(run.best_checkpoint), device="cpu", cache=False), phantom_set,
                              split="test", n_boot=0, out=tmp_path / "eval")
    report = (evaluation.out / "report.md").read_text()
    assert "Trained with reviews: `5 labels from reviewers' decisions up to action 8" in report
