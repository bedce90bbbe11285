"""Labels read from caption text for rare classes (training/textlabels.py)."""

from __future__ import annotations

import numpy as np

from audiocap_cli.training import textlabels


def test_keywords_are_the_name_parts_without_qualifiers() -> None:
    assert textlabels.keywords("Cattle, bovinae") == [("cattle",), ("bovinae",)]
    assert textlabels.keywords("Whimper (dog)") == [("whimper",)]
    assert textlabels.keywords("Church bell") == [("church", "bell")]
    # three words and more are descriptions, not names a caption uses
    assert textlabels.keywords("Outside, urban or manmade") == [("outside",)]


def test_forms_cover_regular_inflections() -> None:
    assert {"moo", "moos", "mooing", "mooed"} <= textlabels.forms("moo")
    assert {"whistling", "whistled"} <= textlabels.forms("whistle")
    assert {"humming"} <= textlabels.forms("hum")
    assert "cattle" in textlabels.forms("cattle")
    assert "cat" not in textlabels.forms("cattle")


def test_mentions_matches_whole_words_in_sequence() -> None:
    pats = [tuple(frozenset(textlabels.forms(w)) for w in ("church", "bell"))]
    assert textlabels.mentions("Church bells ring in the distance", pats)
    assert not textlabels.mentions("A bell rings near a church", pats)
    moo = [(frozenset(textlabels.forms("moo")),)]
    assert textlabels.mentions("Cows are mooing", moo)
    assert not textlabels.mentions("A smooth engine", moo)


def test_rare_classes_are_added_only_within_the_same_branch() -> None:
    """Classes: 0 Animal, 1 Moo (rare), 2 Engine, 3 Roar (rare, an animal sound). Branches:
    Animal (0, 1, 3), Things (2). A caption naming a rare class gains it only when its clip's
    labels share the class's branch ("an engine roars" stays an engine)."""
    names = ["Animal", "Moo", "Engine", "Roar"]
    branches = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=bool)
    labels = np.zeros((4 + textlabels.RARE, 4), np.float32)
    labels[:, 0] = 1  # plenty of Animal clips: never read from text
    labels[2, :] = [0, 0, 1, 0]
    captions = ["Cows are mooing", "An animal roars", "An engine roars", "A dog barks"] + [
        "An animal"
    ] * textlabels.RARE
    out, gained = textlabels.add_text_labels(labels, captions, names, branches)
    assert out[0, 1] == 1 and out[1, 3] == 1  # moo, roar heard in animal clips
    assert out[2, 3] == 0  # the engine clip does not become an animal's roar
    assert gained == {1: 1, 3: 1}
    assert np.array_equal(out[:, 0], labels[:, 0])
    # a class with RARE clips or more keeps its human labels only
    common = labels.copy()
    common[4:, 1] = 1
    out2, gained2 = textlabels.add_text_labels(common, captions, names, branches)
    assert 1 not in gained2 and out2[0, 1] == 0
