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


def test_earlier_studies_count_those_without_an_image_too() -> None:
    # NIH downloaded in part: follow-up 39 had 39 earlier studies in the table, none with an image, and `b` said
    # "no earlier study of this patient".
    studies = [_study(f"p_{k:03d}", "p", k, image=False) for k in range(39)] + [_study("p_039", "p", 39)]
    workspace = Workspace(studies={s.id: s for s in studies})
    assert workspace.prior_of("p_039") is None and workspace.earlier_studies("p_039") == 39
    assert workspace.earlier_studies("p_000") == 0 and workspace.earlier_studies("unknown") == 0
