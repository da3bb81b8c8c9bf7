from __future__ import annotations

import numpy as np
import pytest

from cxr_core.errors import DataError
from cxr_core.labels import (
    LabelState,
    UncertaintyPolicy,
    builtin_spaces,
    custom_space,
    get_space,
    space_for_names,
    targets,
)


def test_builtin_spaces_have_the_published_sizes():
    spaces = builtin_spaces()
    assert len(spaces["nih"].findings) == 14 and spaces["nih"].normal == "No Finding"
    assert len(spaces["chexpert"]) == 14
    assert len(spaces["iu"]) == 35 and "Normal" in spaces["iu"].labels
    assert set(spaces["phantom"].findings) <= set(spaces["nih"].labels)


def test_aliases_and_spelling_resolve_to_one_label():
    nih = get_space("nih")
    assert nih.canonical("Pleural Thickening") == "Pleural_Thickening"
    assert nih.canonical("pleural_thickening") == "Pleural_Thickening"
    assert nih.canonical("  effusion ") == "Effusion"
    assert nih.canonical("Pleural Effusion") == "Effusion"
    assert nih.canonical("Tuberculosis") is None


def test_from_positives_sets_normal_only_without_findings():
    nih = get_space("nih")
    vector, unmapped = nih.from_positives(["Cardiomegaly", "Effusion", "Alien"])
    assert unmapped == ["Alien"]
    assert nih.positives(vector) == ["Cardiomegaly", "Effusion"]
    normal, _ = nih.from_positives(["No Finding"])
    assert nih.positives(normal) == ["No Finding"]
    assert set(normal) == {"0", "1"}


def test_four_states_round_trip_and_targets_follow_the_policy():
    space = get_space("chexpert")
    states = {"Edema": LabelState.POSITIVE, "Atelectasis": LabelState.UNCERTAIN, "Pneumothorax": LabelState.NEGATIVE}
    vector = space.encode(states)
    decoded = space.decode(vector)
    assert decoded["Edema"] is LabelState.POSITIVE and decoded["Atelectasis"] is LabelState.UNCERTAIN
    assert decoded["Fracture"] is LabelState.UNKNOWN
    a, e, p = (space.index(x) for x in ("Atelectasis", "Edema", "Pneumothorax"))
    y, mask = targets([vector], UncertaintyPolicy.IGNORE)
    assert (y[0, e], mask[0, e], mask[0, a], mask[0, p], y[0, p]) == (1, 1, 0, 1, 0)
    assert mask[0, space.index("Fracture")] == 0
    y, mask = targets([vector], UncertaintyPolicy.ONES)
    assert (y[0, a], mask[0, a]) == (1, 1)
    y, mask = targets([vector], UncertaintyPolicy.ZEROS)
    assert (y[0, a], mask[0, a]) == (0, 1)
    assert np.isin(y, (0, 1)).all()


def test_space_for_names_prefers_builtin_and_falls_back_to_custom():
    assert space_for_names(["Cardiomegaly", "No Finding", "Pleural_Thickening"]).name == "nih"
    assert space_for_names(["Lung Opacity", "Support Devices"]).name == "chexpert"
    custom = space_for_names(["Tuberculosis", "Normal", "COVID-19"])
    assert custom.name == "custom" and custom.normal == "Normal" and custom.labels[-1] == "Normal"
    assert custom_space([]).labels == ()


def test_unknown_space_is_a_clear_error():
    with pytest.raises(DataError, match="unknown label space 'nope'"):
        get_space("nope")
