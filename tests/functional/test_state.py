"""The workspace's answers the screens rely on."""

from __future__ import annotations

from cxr_core.data import Study, StudyImage
from cxr_tui.state import Workspace


def _study(study_id: str, patient: str, follow_up: int | None, image: bool = True) -> Study:
    images = (StudyImage(f"{study_id}.png"),) if image else ()
    return Study(study_id, patient, images, "", meta={} if follow_up is None else {"follow_up": follow_up})


def test_the_prior_study_is_the_same_patients_previous_follow_up_with_an_image() -> None:
    studies = [_study("p1_002", "p1", 2), _study("p1_000", "p1", 0), _study("p1_001", "p1", 1, image=False),
               _study("p2_000", "p2", 0), _study("p1_010", "p1", 10)]
    workspace = Workspace(studies={s.id: s for s in studies})
    assert workspace.prior_of("p1_002").id == "p1_000"  # follow-up 1 has no image on disk
    assert workspace.prior_of("p1_010").id == "p1_002"  # by follow-up number
    assert workspace.prior_of("p1_000") is None
    assert workspace.prior_of("p2_000") is None
    assert workspace.prior_of("unknown") is None
