"""cxr_core.train.sampling: rare-label oversampling, epoch determinism, resume, sharding."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.train.sampling import RareLabelSampler, ShuffleSampler, sample_weights


def _targets(n: int = 1000) -> np.ndarray:
    """Label 0 on 2 % of images, label 1 on 50 %, the rest with no positive (48 %)."""
    y = np.zeros((n, 3), np.float32)
    y[: n // 50, 0] = 1
    y[n // 2 :, 1] = 1
    return y


def test_weights_follow_inverse_frequency_with_no_positive_as_its_own_class():
    y = _targets(100)
    weights = sample_weights(y, power=1.0)
    assert weights[0] == pytest.approx(50.0)  # label 0: 2 of 100
    assert weights[60] == pytest.approx(2.0)  # label 1: 50 of 100
    assert weights[10] == pytest.approx(100 / 48)  # no positive: 48 of 100
    both = y.copy()
    both[60, 0] = 1
    assert sample_weights(both, power=1.0)[60] == pytest.approx(100 / 3)  # the rarer label wins
    assert np.allclose(sample_weights(y, power=0.0), 1.0)


def test_rare_labels_are_drawn_more_often_than_their_frequency():
    y = _targets()
    sampler = RareLabelSampler(y, num_samples=20_000, power=0.5, seed=3)
    drawn = y[list(sampler)]
    rare_share = drawn[:, 0].mean()
    assert rare_share > 3 * 0.02
    expected = 20 * np.sqrt(50) / (20 * np.sqrt(50) + 500 * np.sqrt(2) + 480 * np.sqrt(1000 / 480))
    assert rare_share == pytest.approx(expected, abs=0.01)
    assert drawn[:, 1].mean() < 0.5


def test_order_is_a_pure_function_of_seed_and_epoch():
    y = _targets(200)
    a, b = RareLabelSampler(y, seed=1), RareLabelSampler(y, seed=1)
    for epoch in (0, 1, 2):
        a.set_epoch(epoch)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(RareLabelSampler(y, seed=2)) != list(RareLabelSampler(y, seed=1))


@pytest.mark.parametrize("make", [lambda: RareLabelSampler(_targets(300), seed=4), lambda: ShuffleSampler(300, seed=4)])
def test_state_dict_round_trip_resumes_the_same_order(make):
    running = make()
    running.set_epoch(5)
    resumed = make()
    resumed.seed = 99
    resumed.load_state_dict(running.state_dict())
    assert resumed.epoch == 5 and list(resumed) == list(running)


def test_state_from_another_data_set_or_power_is_refused():
    state = RareLabelSampler(_targets(300)).state_dict()
    with pytest.raises(ValueError, match="n=300"):
        RareLabelSampler(_targets(200)).load_state_dict(state)
    with pytest.raises(ValueError, match="power"):
        RareLabelSampler(_targets(300), power=1.0).load_state_dict(state)
    with pytest.raises(ValueError, match="kind"):
        ShuffleSampler(300).load_state_dict(state)


def test_shuffle_is_a_permutation_that_changes_per_epoch():
    sampler = ShuffleSampler(50, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("make", [lambda **kw: ShuffleSampler(10, seed=7, **kw),
                                  lambda **kw: RareLabelSampler(_targets(10), seed=7, **kw)])
def test_replicas_split_one_global_order_into_equal_disjoint_positions(make):
    shards = [make(num_replicas=3, rank=r) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    lengths = {len(s) for s in shards}
    assert lengths == {4} and all(len(list(s)) == 4 for s in shards)
    order = make().order(2)
    padded = np.resize(order, 12)
    for rank, shard in enumerate(shards):
        assert list(shard) == padded[rank::3].tolist()
    if isinstance(shards[0], ShuffleSampler):
        assert set().union(*(set(s) for s in shards)) == set(range(10))
    with pytest.raises(ValueError):
        make(num_replicas=2, rank=2)
