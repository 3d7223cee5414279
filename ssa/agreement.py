"""How the engine's labels agree with the reference's: on every mask, and on the masks none of whose
reference decisions is a near-tie (a margin below its threshold), where a lower precision (fp16 on
a GPU, bf16 on a CPU) must not change a single label.

A mask's decisions and their margins (`MaskLabel.margins`, from the reference):
- close_set: OneFormer's majority class inside the mask, per dataset (vote gap, share of the mask);
- caption: BLIP's greedy tokens (smallest logit gap between the chosen token and the next): a
  flipped token changes the caption from there on, so the noun phrases, so the candidates;
- clip: CLIP's top-k and its order (smallest logit gap at the boundary and between ranks);
- clipseg: CLIPSeg's pixel vote (gap between the two best classes, share of the mask).
"""

from __future__ import annotations

DECISIONS = ("caption", "clip", "clipseg")

NEAR_TIE = {"close_set": 0.02, "caption": 0.25, "clip": 0.25, "clipseg": 0.02}


def near_tie(margins: dict, thresholds: dict = NEAR_TIE) -> bool:
    return any(margins[k] < thresholds[k] for k in thresholds if k in margins)


def same_label(a, b) -> bool:
    return (a.class_name, a.class_proposals) == (b.class_name, b.class_proposals)


def agreement(reference: dict, engine: dict, thresholds: dict = NEAR_TIE) -> dict:
    """{stem: [MaskLabel]} each; labels (class_name + class_proposals) equal on all masks and on the
    masks whose reference decisions are all clear of a tie; "differ_clear" lists the stems and mask
    indices where a clear decision came out differently (should be empty)."""
    equal = total = clear = clear_equal = 0
    differ = []
    for stem, ref_labels in reference.items():
        for i, (r, e) in enumerate(zip(ref_labels, engine[stem], strict=True)):
            same = same_label(r, e)
            total += 1
            equal += same
            if not near_tie(r.margins, thresholds):
                clear += 1
                clear_equal += same
                if not same:
                    differ.append([stem, i])
    return {"equal": equal, "total": total, "not_near_tie_equal": clear_equal, "not_near_tie_total": clear,
            "differ_clear": differ}


def decision_agreement(reference: dict, engine: dict, thresholds: dict = NEAR_TIE) -> dict:
    """The decisions of each mask in the order they are taken, each compared where the ones before
    it came out the same (so it was taken on the same inputs): the caption; then CLIP's top-k and
    order (its candidates are the caption's noun phrases and OneFormer's classes, so a OneFormer vote
    that changed shows here); then CLIPSeg's winner. A decision that differs although its reference
    margin is clear of its threshold is listed in "differ_clear" (should be empty); per decision,
    how many were compared, how many of those were clear, and how many were equal."""
    counts = {d: {"compared": 0, "clear": 0, "equal": 0, "clear_equal": 0} for d in DECISIONS}
    differ = []
    for stem, ref_labels in reference.items():
        for i, (r, e) in enumerate(zip(ref_labels, engine[stem], strict=True)):
            outcomes = (("caption", r.caption == e.caption), ("clip", r.class_proposals == e.class_proposals),
                        ("clipseg", r.class_name == e.class_name))
            # OneFormer's votes have no output of their own: they reach CLIP as candidates, so CLIP's
            # decision is clear only where they were clear too
            inputs_clear = {"caption": True, "clip": r.margins["close_set"] >= thresholds["close_set"], "clipseg": True}
            for decision, same in outcomes:
                c = counts[decision]
                clear = inputs_clear[decision] and r.margins[decision] >= thresholds[decision]
                c["compared"] += 1
                c["equal"] += same
                c["clear"] += clear
                c["clear_equal"] += clear and same
                if clear and not same:
                    differ.append([stem, i, decision])
                if not same:
                    break  # what follows was decided on other inputs
    return {"decisions": counts, "differ_clear": differ}
