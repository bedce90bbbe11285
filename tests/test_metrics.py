"""Caption metrics against pycocoevalcap 1.2 reference values (Java 17), and their failure modes."""

from __future__ import annotations

import json
import math
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _shared import EXAMPLE_REFS, JAVA, clotho_validation_rows, needs_java

from audiocap_cli.errors import MetricsError
from audiocap_cli.evaluation import metrics as M

CANDS = {"a": "a dog barks loudly while a man talks", "b": "water is running from a faucet"}
REFS = EXAMPLE_REFS
# pycocoevalcap 1.2 on Java 17 (PTBTokenizer + Bleu(4) / Meteor / Rouge / Cider, as COCOEvalCap).
REF_CORPUS = {
    "bleu_1": 0.9285714285051022,
    "bleu_2": 0.7359800721370365,
    "bleu_3": 0.4767097509567226,
    "bleu_4": 6.0662182290708884e-05,
    "meteor": 0.3912777243428193,
    "rouge_l": 0.5272727272727273,
    "cider_d": 1.7644974123724968,
}
REF_PER_CLIP = {
    "a": {"bleu_1": 0.8749999998906252, "bleu_4": 7.598356855310593e-05, "meteor": 0.46076005595009917,
          "rouge_l": 0.5, "cider_d": 2.187868584257946},
    "b": {"bleu_1": 0.9999999996666668, "bleu_4": 1.4953487806168506e-08, "meteor": 0.32733694937967106,
          "rouge_l": 0.5545454545454546, "cider_d": 1.3411262404870476},
}  # fmt: skip
CHEAP = ("bleu", "rouge_l", "cider_d")  # no METEOR JVM (~10 s to start)


@pytest.fixture(scope="module")
def reference_result(tmp_path_factory: pytest.TempPathFactory) -> M.MetricsResult:
    """One full default run (one tokenizer + one METEOR JVM) shared by several tests."""
    if JAVA is None:
        pytest.skip("no `java` on PATH")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(M.SPICE_DIR_ENV, raising=False)
        mp.setenv("AUDIOCAP_CACHE", str(tmp_path_factory.mktemp("cache")))
        return M.score(CANDS, REFS)


@needs_java
def test_reference_values_corpus(reference_result: M.MetricsResult) -> None:
    for key, want in REF_CORPUS.items():
        tol = 1e-9 if key == "meteor" else 1e-12
        assert reference_result.corpus[key] == pytest.approx(want, abs=tol, rel=0), key
    assert reference_result.n == 2


@needs_java
def test_reference_values_per_clip(reference_result: M.MetricsResult) -> None:
    for cid, want in REF_PER_CLIP.items():
        for key, value in want.items():
            tol = 1e-9 if key == "meteor" else 1e-12
            assert reference_result.per_clip[cid][key] == pytest.approx(value, abs=tol, rel=0), (
                cid,
                key,
            )
    # METEOR's corpus score aggregates statistics; it is not the mean of the per-clip scores.
    per = [reference_result.per_clip[c]["meteor"] for c in CANDS]
    assert abs(np.mean(per) - reference_result.corpus["meteor"]) > 1e-3


@needs_java
def test_spice_unavailable_without_corenlp(reference_result: M.MetricsResult) -> None:
    if M.find_corenlp_jars(None)[0] is not None:
        pytest.skip("CoreNLP 3.6.0 jars are installed in pycocoevalcap's spice/lib")
    assert reference_result.corpus["spice"] is None and reference_result.corpus["spider"] is None
    assert "stanford-corenlp-3.6.0.jar" in reference_result.unavailable["spice"]
    assert M.SPICE_DIR_ENV in reference_result.unavailable["spice"]
    assert "SPICE" in reference_result.unavailable["spider"]
    assert "spice" not in reference_result.per_clip["a"]
    assert "\n" not in reference_result.unavailable["spice"]


@needs_java
def test_nothing_on_stdout_and_batch_equals_single(capfd: pytest.CaptureFixture[str]) -> None:
    other = {"a": "a man speaks", "b": "a sink fills with running water"}
    batch = M.score_batch({"x": (CANDS, REFS), "y": (other, REFS)}, metrics=CHEAP)
    out, _ = capfd.readouterr()
    assert out == ""  # BleuScorer prints unless told not to
    for name, preds in (("x", CANDS), ("y", other)):
        single = M.score(preds, REFS, metrics=CHEAP)
        assert batch[name].corpus == single.corpus
        assert batch[name].per_clip == single.per_clip
    assert batch["x"].corpus["cider_d"] == REF_CORPUS["cider_d"]
    assert batch["x"].corpus["bleu_1"] == REF_CORPUS["bleu_1"]


@needs_java
def test_subset_and_line_breaks_and_empty_caption() -> None:
    # A "\r" inside a caption must not shift the tokenised lines onto other clips.
    crlf = {"a": "a dog barks loudly\rwhile a man talks", "b": CANDS["b"]}
    res = M.score(crlf, REFS, metrics=CHEAP)
    assert res.corpus["cider_d"] == REF_CORPUS["cider_d"]
    # Punctuation and case are normalised by the PTB tokenizer.
    res = M.score(
        {"a": "A dog barks, loudly; while a man talks!", "b": CANDS["b"]}, REFS, metrics=CHEAP
    )
    assert res.corpus["bleu_1"] == REF_CORPUS["bleu_1"]
    empty = M.score({"a": "", "b": "..."}, REFS, metrics=CHEAP)
    assert empty.corpus["cider_d"] == 0.0 and empty.per_clip["b"]["rouge_l"] == 0.0
    single = M.score({"b": CANDS["b"]}, REFS, metrics=("rouge_l",))
    assert single.n == 1 and list(single.per_clip) == ["b"]
    assert single.corpus == {"rouge_l": REF_PER_CLIP["b"]["rouge_l"]}


def test_malformed_inputs_are_metrics_errors() -> None:
    with pytest.raises(MetricsError, match="no references for 'zzz'"):
        M.score({"zzz": "x"}, REFS, metrics=CHEAP)
    with pytest.raises(MetricsError, match="not text"):
        M.score({"a": 3}, REFS, metrics=CHEAP)  # type: ignore[dict-item]
    with pytest.raises(MetricsError, match="non-empty list"):
        M.score({"a": "x"}, {"a": []}, metrics=CHEAP)
    with pytest.raises(MetricsError, match="non-empty list"):
        M.score({"a": "x"}, {"a": "a dog"}, metrics=CHEAP)  # type: ignore[dict-item]
    with pytest.raises(MetricsError, match="no predictions"):
        M.score({}, REFS)
    with pytest.raises(MetricsError, match="unknown metric"):
        M.score(CANDS, REFS, metrics=("bleu", "wer"))


def test_metric_names() -> None:
    assert M.metric_keys(("spider",)) == ("cider_d", "spice", "spider")
    assert M.metric_keys(("CIDEr", "bleu")) == ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")
    assert M.metric_keys(M.DEFAULT_METRICS)[-1] == "spider"


def test_java_missing_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="Java not found") as e:
        M.score(CANDS, REFS, metrics=CHEAP, java=str(tmp_path / "no-java"))
    assert "\n" not in str(e.value)


# ---- failing jars, through a fake `java` ------------------------------------------------------

_FAKE_JAVA = """#!/bin/sh
for a in "$@"; do
  case "$a" in
    edu.anu.spice.SpiceScorer) exec "{python}" "{spice}" "$@" ;;
    *PTBTokenizer) [ "$FAKE_MODE" = ptb-garbage ] && {{ echo garbage; exit 0; }}
                   [ "$FAKE_MODE" = ptb-fail ] && {{ echo "Exception in thread main" >&2; exit 1; }} ;;
    meteor-1.5.jar) [ "$FAKE_MODE" = meteor-garbage ] && {{ while read l; do echo "not numbers"; done; exit 0; }}
                    [ "$FAKE_MODE" = meteor-die ] && {{ echo "Error: could not load paraphrase table" >&2; exit 1; }} ;;
  esac
done
exec "{java}" "$@"
"""

_FAKE_SPICE = """import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "w") as f:
    json.dump(args, f)
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "spice-fail":
    print("java.lang.OutOfMemoryError: Java heap space", file=sys.stderr)
    sys.exit(3)
inp = args[args.index("edu.anu.spice.SpiceScorer") + 1]
out = args[args.index("-out") + 1]
items = json.load(open(inp))
if mode == "spice-garbage":
    open(out, "w").write("{not json")
    sys.exit(0)
rows = [{"image_id": it["image_id"],
         "scores": {"All": {"f": None if it["test"] == "nothing" else len(it["test"].split()) / 10,
                            "pr": 0.0, "re": 0.0}}} for it in items]
json.dump(rows, open(out, "w"))
"""


@pytest.fixture()
def fake_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if JAVA is None:
        pytest.skip("no `java` on PATH")
    spice = tmp_path / "fake_spice.py"
    spice.write_text(_FAKE_SPICE)
    exe = tmp_path / "java"
    exe.write_text(_FAKE_JAVA.format(python=sys.executable, spice=spice, java=JAVA))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "spice_args.json"))
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(M.SPICE_DIR_ENV, raising=False)
    return exe


@pytest.fixture()
def corenlp_dir(tmp_path: Path) -> Path:
    """Stand-in CoreNLP jars: the fake SPICE never opens them."""
    d = tmp_path / "corenlp" / "lib"
    d.mkdir(parents=True)
    for name in M.CORENLP_JARS:
        (d / name).write_bytes(b"")
    return d.parent


def test_spice_plumbing_and_spider(fake_java: Path, corenlp_dir: Path, tmp_path: Path) -> None:
    preds = {"a": "a dog barks", "b": "nothing"}
    res = M.score(preds, REFS, metrics=("spider",), java=str(fake_java), spice_dir=corenlp_dir)
    # Tokenised text reaches SPICE, one item per clip; None becomes NaN as in spice.py.
    assert res.per_clip["a"]["spice"] == pytest.approx(0.3)
    assert math.isnan(res.per_clip["b"]["spice"])
    assert math.isnan(res.corpus["spice"])  # np.mean propagates NaN, as pycocoevalcap does
    assert res.per_clip["a"]["spider"] == pytest.approx((res.per_clip["a"]["cider_d"] + 0.3) / 2)
    assert res.unavailable == {}
    args = json.loads((tmp_path / "spice_args.json").read_text())
    classpath = args[args.index("-cp") + 1]
    assert str(corenlp_dir / "lib" / M.CORENLP_JARS[1]) in classpath
    assert any(a.startswith("--add-opens=java.base/java.lang=") for a in args)  # Java 17
    assert {"-subset", "-silent", "-cache"} <= set(args)
    assert str(tmp_path / "cache") in args[args.index("-cache") + 1]

    ok = M.score({"a": "a dog barks", "b": "water runs"}, REFS, metrics=("spider",), java=str(fake_java),
                 spice_dir=corenlp_dir)  # fmt: skip
    assert ok.corpus["spice"] == pytest.approx(0.25)
    assert ok.corpus["spider"] == pytest.approx((ok.corpus["cider_d"] + 0.25) / 2)


def test_spice_dir_from_env_and_wrong_dir(fake_java: Path, corenlp_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv(M.SPICE_DIR_ENV, str(corenlp_dir / "lib"))
    res = M.score(CANDS, REFS, metrics=("spice",), java=str(fake_java))
    assert res.corpus["spice"] is not None
    with pytest.raises(MetricsError, match="does not hold stanford-corenlp-3.6.0.jar"):
        M.score(CANDS, REFS, metrics=("spice",), java=str(fake_java), spice_dir=tmp_path)


@pytest.mark.parametrize(
    ("mode", "metrics", "message"),
    [
        ("spice-fail", ("spice",), r"SPICE failed \(exit 3\): java.lang.OutOfMemoryError"),
        ("spice-garbage", ("spice",), "SPICE wrote unreadable output"),
        ("ptb-garbage", ("bleu",), "PTB tokenizer returned"),
        ("ptb-fail", ("bleu",), r"PTB tokenizer failed \(exit 1\): Exception in thread main"),
        ("meteor-garbage", ("meteor",), "METEOR returned unexpected statistics"),
        ("meteor-die", ("meteor",), "METEOR stopped before answering.*paraphrase table"),
    ],
)
def test_failing_jars_are_one_clear_error(
    fake_java: Path, corenlp_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
    metrics: tuple[str, ...], message: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_MODE", mode)
    with pytest.raises(MetricsError, match=message) as e:
        M.score(CANDS, REFS, metrics=metrics, java=str(fake_java), spice_dir=corenlp_dir)
    assert "\n" not in str(e.value)


# ---- BERTScore column -------------------------------------------------------------------------


def test_bertscore_column_through_bertscore_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    import audiocap_cli.text

    calls = []

    def multi_ref_bertscore(cands: list[str], refs: list[list[str]], cfg: object) -> np.ndarray:
        calls.append((cands, refs, cfg))
        return np.array(
            [
                max(len(set(c.split()) & set(r.split())) / 10 for r in rs)
                for c, rs in zip(cands, refs)
            ]
        )

    fake = types.ModuleType("audiocap_cli.text.bertscore")
    fake.multi_ref_bertscore = multi_ref_bertscore  # type: ignore[attr-defined]
    fake.BertScoreConfig = lambda: "default-cfg"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "audiocap_cli.text.bertscore", fake)
    monkeypatch.setattr(audiocap_cli.text, "bertscore", fake, raising=False)
    out = M.score_batch({"x": (CANDS, REFS), "y": ({"a": "dog"}, REFS)}, metrics=("bertscore",),
                        java="/no/java/needed")  # fmt: skip
    assert len(calls) == 1 and calls[0][2] == "default-cfg"  # one batched call, raw text
    assert calls[0][0] == [CANDS["a"], CANDS["b"], "dog"]
    assert out["x"].per_clip["a"]["bertscore"] == pytest.approx(0.5)  # max over references
    assert out["x"].corpus["bertscore"] == pytest.approx(
        np.mean([0.5, out["x"].per_clip["b"]["bertscore"]])
    )
    assert out["y"].corpus["bertscore"] == pytest.approx(0.1)  # "a dog barks in the distance"

    del fake.multi_ref_bertscore  # type: ignore[attr-defined]
    res = M.score(CANDS, REFS, metrics=("bertscore",))
    assert res.corpus["bertscore"] is None and "multi_ref_bertscore" in res.unavailable["bertscore"]


@pytest.mark.slow
def test_bertscore_real_module() -> None:
    preds = {"a": REFS["a"][1], "b": "a car engine revs"}
    res = M.score(preds, REFS, metrics=("bertscore",))
    if "bertscore" in res.unavailable:
        pytest.skip(res.unavailable["bertscore"])
    # A caption equal to one of the references gets that reference's (maximal) score.
    assert res.per_clip["a"]["bertscore"] > res.per_clip["b"]["bertscore"]


@pytest.mark.slow
def test_real_clotho_captions_match_pycocoevalcap_scorers() -> None:
    """200 real Clotho captions (unicode, punctuation, repeats): our tokenised text through
    pycocoevalcap's own Meteor / Bleu / Cider classes gives exactly our numbers."""
    rows = clotho_validation_rows(200)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor

    preds = {r["file_name"]: r["caption_1"] for r in rows}
    preds[rows[1]["file_name"]] = preds[rows[0]["file_name"]]  # a repeated caption
    refs = {r["file_name"]: [r[f"caption_{i}"] for i in range(2, 6)] for r in rows}
    res = M.score(preds, refs, metrics=("bleu", "meteor", "cider_d"))
    gts, hyp = M._tokenize(JAVA, {"": M._prepare("", preds, refs)})[""]
    m_corpus, m_items = Meteor().compute_score(gts, hyp)
    b_corpus, _ = Bleu(4).compute_score(gts, hyp, verbose=0)
    c_corpus, c_items = Cider().compute_score(gts, hyp)
    assert res.corpus["meteor"] == m_corpus and res.corpus["bleu_4"] == b_corpus[3]
    assert res.corpus["cider_d"] == c_corpus
    assert [res.per_clip[k]["meteor"] for k in preds] == m_items
    assert [res.per_clip[k]["cider_d"] for k in preds] == list(c_items)
    assert 0.4 < res.corpus["bleu_1"] < 0.9 and 0.2 < res.corpus["meteor"] < 0.5
