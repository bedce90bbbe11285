"""The paper's evaluation scopes: Human leave-one-out, oracles, 1NN, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _shared import EXAMPLE_REFS, clotho_validation_rows, needs_java

from audiocap_cli.config import load_config
from audiocap_cli.errors import MetricsError
from audiocap_cli.evaluation import evaluate as E
from audiocap_cli.evaluation import metrics as M

CHEAP = ("bleu", "rouge_l", "cider_d")

REFS = {
    **EXAMPLE_REFS,
    "c": [
        "a car engine revs up",
        "an engine idles and revs",
        "a vehicle engine is revving",
        "a motor runs loudly",
        "a car accelerates away",
    ],
}
OURS = {
    "a": "a dog barks loudly while a man talks",
    "b": "water is running from a faucet",
    "c": "a car engine revs",
}


def test_human_rounds_leave_one_out() -> None:
    rounds = E.human_rounds(REFS)
    assert len(rounds) == 5
    cand, rest = rounds[2]
    assert cand["a"] == REFS["a"][2]
    assert rest["a"] == [REFS["a"][i] for i in (0, 1, 3, 4)]
    uneven = {"x": ["1", "2", "3"], "y": ["1", "2"]}
    assert len(E.human_rounds(uneven)) == 2  # rounds = the smallest reference count
    assert E.human_rounds(uneven)[1][1]["x"] == ["1", "3"]
    with pytest.raises(MetricsError, match="needs >= 2 references per clip; 1 clip"):
        E.human_rounds({"x": ["1", "2"], "y": ["only one"]})


@needs_java
def test_human_is_mean_of_per_round_corpus_scores() -> None:
    human = E.human_scores(REFS, metrics=CHEAP)
    rounds = [M.score(c, r, metrics=CHEAP) for c, r in E.human_rounds(REFS)]
    for key in ("bleu_1", "bleu_4", "cider_d", "rouge_l"):
        assert human.corpus[key] == pytest.approx(
            np.mean([r.corpus[key] for r in rounds]), abs=1e-15
        )
    assert human.per_clip["b"]["cider_d"] == pytest.approx(
        np.mean([r.per_clip["b"]["cider_d"] for r in rounds])
    )
    assert human.n == 3
    # Pooling every round into one corpus would give other BLEU numbers: check we did not.
    pooled_c = {f"{cid}#{j}": c[cid] for j, (c, _) in enumerate(E.human_rounds(REFS)) for cid in c}
    pooled_r = {f"{cid}#{j}": r[cid] for j, (_, r) in enumerate(E.human_rounds(REFS)) for cid in r}
    assert M.score(pooled_c, pooled_r, metrics=CHEAP).corpus["bleu_4"] != pytest.approx(
        human.corpus["bleu_4"]
    )


@needs_java
def test_evaluate_scopes_one_batch_matches_reference(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """All rows with METEOR in one JVM; the "Ours" row of the first two clips is the
    pycocoevalcap 1.2 reference example."""
    monkeypatch.delenv(M.SPICE_DIR_ENV, raising=False)
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path))
    refs = {k: REFS[k] for k in ("a", "b")}
    ours = {k: OURS[k] for k in ("a", "b")}
    scopes = [
        E.Scope(E.OURS, ours),
        E.Scope(E.nn_name("yamnet"), lambda ids: {cid: "a dog barks" for cid in ids}, "retrieval"),
    ]
    rows = E.evaluate_scopes(scopes, refs, E.EvalConfig(metrics=("bleu", "meteor", "cider_d")))
    assert list(rows) == [E.OURS, "1NN-yamnet", E.HUMAN]
    assert rows[E.OURS].corpus["meteor"] == pytest.approx(0.3912777243428193, abs=1e-9, rel=0)
    assert rows[E.OURS].corpus["cider_d"] == 1.7644974123724968
    assert rows[E.OURS].corpus["bleu_4"] == 6.0662182290708884e-05
    human = E.human_scores(refs, metrics=("bleu", "cider_d"))
    assert rows[E.HUMAN].corpus["cider_d"] == pytest.approx(human.corpus["cider_d"], abs=1e-15)
    assert 0 < rows[E.HUMAN].corpus["meteor"] < 1
    text = E.render_table(rows)
    assert "1NN-yamnet" in text and "0.391" in text


def test_scope_checks() -> None:
    with pytest.raises(MetricsError, match="no prediction for 1 of 3 test clips"):
        E.evaluate_scopes(
            {E.OURS: {"a": "x", "b": "y"}}, REFS, E.EvalConfig(metrics=CHEAP, human=False)
        )
    with pytest.raises(MetricsError, match="outside the test set"):
        E.evaluate_scopes(
            {E.OURS: {**OURS, "zz": "x"}}, REFS, E.EvalConfig(metrics=CHEAP, human=False)
        )
    with pytest.raises(MetricsError, match="unique"):
        E.evaluate_scopes({E.HUMAN: OURS}, REFS, E.EvalConfig(metrics=CHEAP))


def _rows() -> dict[str, M.MetricsResult]:
    keys = M.metric_keys(M.DEFAULT_METRICS)
    why = "SPICE needs Stanford CoreNLP 3.6.0"
    ours = M.MetricsResult(
        corpus={
            k: (None if k in ("spice", "spider") else 0.1 * (i + 1)) for i, k in enumerate(keys)
        },
        per_clip={"a": {"bleu_1": 0.5}},
        unavailable={"spice": why, "spider": "needs SPICE"},
        n=3,
    )
    human = M.MetricsResult(
        corpus={**{k: 0.5 for k in keys}, "spice": math.nan, "spider": math.nan, "bertscore": 0.9},
        per_clip={"a": {"bleu_1": 0.25, "spice": math.nan}},
        n=3,
    )
    return {E.OURS: ours, E.HUMAN: human}


def test_table_paper_column_order() -> None:
    t = E.table(_rows())
    assert list(t[0]) == ["system", "n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr-D",
                          "ROUGE-L", "SPICE", "SPIDEr", "BERTScore"]  # fmt: skip
    assert t[0]["system"] == E.OURS and t[0]["SPICE"] is None and t[0]["BERTScore"] is None
    assert t[0]["CIDEr-D"] == pytest.approx(0.7) and t[0]["ROUGE-L"] == pytest.approx(0.6)
    assert t[1]["BERTScore"] == 0.9
    no_bert = {E.OURS: _rows()[E.OURS]}
    assert "BERTScore" not in E.table(no_bert)[0]


def test_render_table_plain_text() -> None:
    text = E.render_table(_rows())
    lines = text.splitlines()
    assert lines[0].split() == ["system", "n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr-D",
                                "ROUGE-L", "SPICE", "SPIDEr", "BERTScore"]  # fmt: skip
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split()[:3] == ["Ours", "3", "0.100"] and "n/a" in lines[2]
    assert lines[3].split()[-3:] == ["nan", "nan", "0.900"]
    assert "SPICE: n/a: SPICE needs Stanford CoreNLP 3.6.0" in text
    assert "\x1b" not in text  # no terminal escapes: the library is rich-free


def test_save_results(tmp_path: Path) -> None:
    cfg = E.EvalConfig()
    E.save_results(tmp_path / "out", _rows(), cfg)
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["rows"][1]["SPICE"] is None  # NaN is not JSON
    assert table["unavailable"][E.OURS]["spice"].startswith("SPICE needs")
    lines = [
        json.loads(ln) for ln in (tmp_path / "out" / "per_clip.jsonl").read_text().splitlines()
    ]
    assert lines == [{"system": "Ours", "clip": "a", "bleu_1": 0.5},
                     {"system": "Human", "clip": "a", "bleu_1": 0.25, "spice": None}]  # fmt: skip
    assert load_config(E.EvalConfig, tmp_path / "out" / "eval_config.json") == cfg


# ---- oracles and retrieval-only rows ----------------------------------------------------------


def test_nearest_captions_excludes_own_clip() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(5, 8)).astype(np.float32)
    key_ids = ["q1", "k1", "k2", "k3", "k4"]
    caps = [["own caption"], ["one", "one bis"], ["two"], ["three"], ["four"]]
    queries = np.stack([keys[0] * 3.0, keys[2] + 0.01 * rng.normal(size=8)])  # q1 is itself a key
    out = E.nearest_captions(queries, ["q1", "q2"], keys, key_ids, caps, k=1)
    assert out["q2"] == ["two"]
    sims = (keys[1:] / np.linalg.norm(keys[1:], axis=1, keepdims=True)) @ (
        keys[0] / np.linalg.norm(keys[0])
    )
    assert out["q1"] == caps[1 + int(np.argmax(sims))][:1]  # nearest other clip, never its own
    out3 = E.nearest_captions(queries, ["q1", "q2"], keys, key_ids, caps, k=3, chunk=1)
    assert out3["q2"][0] == "two" and len(out3["q2"]) == 3 and "own caption" not in out3["q1"]
    with pytest.raises(MetricsError, match="shapes"):
        E.nearest_captions(queries[:, :4], ["q1", "q2"], keys, key_ids, caps)


def test_assert_no_leakage() -> None:
    E.assert_no_leakage({"a": ["t1", "t2"], "b": []})
    with pytest.raises(MetricsError, match="1 clip\\(s\\) are guided by their own captions"):
        E.assert_no_leakage({"a": ["t1", "a"], "b": ["t2"]})


@pytest.mark.slow
def test_human_row_on_real_clotho_captions() -> None:
    """Leave-one-out Human scores on 100 real Clotho validation clips land where published
    human scores on Clotho do (BLEU-1 ~0.5-0.7, CIDEr-D well under 1)."""
    rows = clotho_validation_rows(100)
    refs = {r["file_name"]: [r[f"caption_{i}"] for i in range(1, 6)] for r in rows}
    human = E.human_scores(refs, metrics=CHEAP)
    assert human.n == 100
    assert 0.45 < human.corpus["bleu_1"] < 0.8
    assert 0.2 < human.corpus["cider_d"] < 1.5
    assert human.corpus["bleu_4"] < human.corpus["bleu_1"]
