from __future__ import annotations

import numpy as np
import pytest

from ssa.candidates import clip_proposals, softmax, top_k, union_candidates
from ssa.nouns import noun_phrases
from ssa.voting import majority_class, pixel_vote, resize_nearest


def test_union_keeps_first_occurrence_order():
    assert union_candidates(["wall", "wall"], ["a red car", "wall", " ", "the sky"]) == ["wall", "a red car", "the sky"]


def test_union_is_independent_of_string_hashing():
    # the published engine used set(): its order changed with PYTHONHASHSEED
    names = [f"name {i}" for i in range(50)]
    assert union_candidates(names[:10], names) == names


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [([0.1, 0.5, 0.4], 2, [1, 2]), ([0.3, 0.3, 0.4], 3, [2, 0, 1]), ([1.0], 3, [0]), ([0.2, 0.2], 1, [0])],
)
def test_top_k_breaks_ties_by_lowest_index(scores, k, expected):
    assert top_k(np.array(scores), k) == expected


def test_clip_proposals_one_candidate():
    names, scores, _ = clip_proposals(np.array([1.0, 0.0]), np.array([[0.0, 1.0]]), 100.0, ["cat"], 3)
    assert names == ["cat"] and scores == [1.0]


def test_clip_proposals_ranks_by_similarity():
    text = np.eye(3)
    names, scores, _ = clip_proposals(np.array([0.0, 0.8, 0.6]), text, 100.0, ["a", "b", "c"], 2)
    assert names == ["b", "c"]
    assert scores[0] > scores[1] and np.isclose(sum(softmax(100.0 * text @ np.array([0.0, 0.8, 0.6]))), 1.0)


def test_majority_class_ties_to_lowest():
    labels = np.array([[3, 3, 1, 1], [5, 5, 5, 0]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)
    assert majority_class(labels, mask, 6) == 1
    assert majority_class(labels, ~mask, 6) == 5


def test_pixel_vote_counts_inside_mask_only():
    winners = np.array([[0, 0, 1], [2, 2, 2]])
    mask = np.array([[1, 1, 1], [0, 0, 0]], bool)
    assert pixel_vote(winners, mask, 3)[:2] == (0, pytest.approx(2 / 3))
    assert pixel_vote(winners, np.zeros_like(mask), 3)[:2] == (0, 0.0)  # empty cropped mask: first proposal


def test_pixel_vote_resizes_mask_by_nearest_neighbour():
    winners = np.zeros((4, 4), int)
    winners[:, 2:] = 1
    mask = np.array([[0, 1], [0, 1]], bool)  # right half at half resolution
    assert resize_nearest(mask, (4, 4)).sum() == 8
    assert pixel_vote(winners, mask, 2)[:2] == (1, 1.0)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a man riding a red bicycle next to the tall building", ["a man", "a red bicycle", "the tall building"]),
        ("two dogs playing with a frisbee in the park", ["two dogs", "a frisbee", "the park"]),
        ("a plate of food on a wooden table", ["a plate", "food", "a wooden table"]),
        ("", []),
    ],
)
def test_noun_phrases_of_real_sentences(nlp, caption, expected):
    assert noun_phrases(caption, nlp) == expected
