"""Caption metrics, numerically identical to pycocoevalcap 1.2 (the MS-COCO caption toolkit).

Pure functions in the style of Labbeti/aac-metrics::

    result = score({"a.wav": "a dog barks"}, {"a.wav": ["a dog is barking", ...]})
    result.corpus["cider_d"], result.per_clip["a.wav"]["meteor"], result.unavailable

What is reused and what is re-driven:

* BLEU-1..4, ROUGE-L and CIDEr-D are pycocoevalcap's own ``Bleu(4)``, ``Rouge`` and ``Cider``
  classes, run on PTB-tokenised text exactly as ``COCOEvalCap.evaluate`` does. coco-caption's
  class named "CIDEr" *is* CIDEr-D (cider_scorer.py: gaussian length penalty with sigma=6,
  n-gram counts clipped by ``min(hyp, ref)``, mean over references, times 10).
* The PTB tokenizer, METEOR 1.5 and SPICE are the same jars with the same arguments, but
  driven from here: one JVM each per call over every clip of every system (a METEOR JVM takes
  ~10 s to load its paraphrase table), temporary files outside site-packages, a configurable
  ``java``, and a :class:`MetricsError` instead of a hang or a traceback when Java is missing or
  a jar fails. The tokenizer is line-based and METEOR's ``SCORE`` statistics are per segment,
  so batching and de-duplicating them changes no number.
* SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads on first use. We
  never download: the jars are looked for in ``spice_dir`` / ``$AUDIOCAP_SPICE_DIR`` /
  pycocoevalcap's ``spice/lib``; without them SPICE and SPIDEr are reported in
  ``MetricsResult.unavailable`` (never replaced by a proxy).
* BERTScore (max over references) is an optional extra column computed by
  ``bertscore.multi_ref_bertscore`` on the raw (untokenised) captions.

Prediction files and matching their keys to reference clip ids live with the caption record, in
:mod:`records`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import MetricsError
from ..resources import cache_dir

# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

#: Metric families a caller may request; "bleu" yields bleu_1..bleu_4.
METRICS: tuple[str, ...] = ("bleu", "meteor", "rouge_l", "cider_d", "spice", "spider", "bertscore")
#: The COCO set (what ``COCOEvalCap`` reports, plus SPIDEr), without the BERTScore column.
DEFAULT_METRICS: tuple[str, ...] = ("bleu", "meteor", "rouge_l", "cider_d", "spice", "spider")
BLEU_KEYS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
#: Families scored on PTB-tokenised text, hence needing Java.
_COCO_FAMILIES = frozenset({"bleu", "meteor", "rouge_l", "cider_d", "spice", "spider"})

# ----------------------------------------------------------------------------------------------
# The jars shipped in the pycocoevalcap 1.2 wheel, and the commands pycocoevalcap runs them with
# ----------------------------------------------------------------------------------------------

_PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
_PTB_ARGS = ("-preserveLines", "-lowerCase")  # tokenizer/ptbtokenizer.py
_METEOR_ARGS = ("-", "-", "-stdio", "-l", "en", "-norm")  # meteor/meteor.py
_METEOR_HEAP = "-Xmx2G"  # meteor/meteor.py
_SPICE_CLASS = "edu.anu.spice.SpiceScorer"  # Main-Class of spice-1.0.jar
_SPICE_HEAP = "-Xmx8G"  # spice/spice.py
_SPICE_FLAGS = ("-subset", "-silent")  # spice/spice.py
#: What pycocoevalcap's get_stanford_models() would download into spice/lib.
CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
#: SPICE's FST serialiser reflects into JDK internals; Java >= 9 must open these packages
#: (InaccessibleObjectException on java.lang.String.value otherwise). Java 8 rejects the flag.
_SPICE_ADD_OPENS: tuple[str, ...] = tuple(
    f"--add-opens={m}=ALL-UNNAMED"
    for m in (
        "java.base/java.lang",
        "java.base/java.lang.reflect",
        "java.base/java.util",
        "java.base/java.util.concurrent",
        "java.base/java.util.concurrent.atomic",
        "java.base/java.util.regex",
        "java.base/java.lang.invoke",
        "java.base/java.security",
        "java.base/java.time",
        "java.base/java.math",
        "java.base/java.net",
        "java.base/java.text",
        "java.base/java.io",
        "java.base/java.nio",
        "java.sql/java.sql",
    )
)
SPICE_DIR_ENV = "AUDIOCAP_SPICE_DIR"
#: Characters Java or Python treat as line breaks. pycocoevalcap only replaces "\n", so a "\r"
#: in a caption shifts every later tokenised line onto the wrong clip; we replace them all.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
#: Generous wall-clock limits: a JVM start is ~0.2 s (tokenizer) to ~10 s (METEOR, loading its
#: paraphrase table) on a busy laptop; per-item costs measured at well under 5 ms.
_JVM_BASE_TIMEOUT_S = 300.0
_JVM_PER_ITEM_TIMEOUT_S = 0.05


def _pycoco_dir(sub: str) -> Path:
    """Folder of a pycocoevalcap sub-package (pycocoevalcap is a namespace package)."""
    spec = importlib.util.find_spec(f"pycocoevalcap.{sub}")
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(
            "pycocoevalcap 1.2 is not installed: run `pip install pycocoevalcap==1.2`"
        )
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsResult:
    """Scores of one system.

    ``corpus``: metric key (bleu_1..bleu_4, meteor, rouge_l, cider_d, spice, spider, bertscore)
    -> corpus score, ``None`` when unavailable. ``per_clip``: clip id -> {metric key -> score}
    for the available metrics. ``unavailable``: metric key -> one line saying why and how to
    enable it. ``n``: number of clips scored.
    """

    corpus: dict[str, float | None]
    per_clip: dict[str, dict[str, float]]
    unavailable: dict[str, str] = field(default_factory=dict)
    n: int = 0


def metric_keys(metrics: Sequence[str]) -> tuple[str, ...]:
    """The result keys of requested metric families, in COCO order (``bleu`` -> 4 keys)."""
    keys: list[str] = []
    for name in _expand(metrics):
        keys.extend(BLEU_KEYS if name == "bleu" else (name,))
    return tuple(keys)


def _expand(metrics: Sequence[str]) -> tuple[str, ...]:
    """Validate metric names; SPIDEr brings in CIDEr-D and SPICE (it is their mean)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    wanted = {m.strip().lower().replace("-", "_") for m in metrics}
    aliases = {"cider": "cider_d", "rouge": "rouge_l", "bert_score": "bertscore"}
    wanted = {aliases.get(m, m) for m in wanted}
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise MetricsError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}"
        )
    if not wanted:
        raise MetricsError(f"no metric requested; choose from {', '.join(METRICS)}")
    if "spider" in wanted:
        wanted |= {"cider_d", "spice"}
    return tuple(m for m in METRICS if m in wanted)


# ----------------------------------------------------------------------------------------------
# Public scoring API
# ----------------------------------------------------------------------------------------------


def score(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    spice_dir: str | Path | None = None,
    java: str = "java",
    bertscore_cfg: Any = None,
) -> MetricsResult:
    """Score ``predictions`` (clip id -> caption) against ``references`` (clip id -> captions).

    Every prediction's id must be in ``references``; references without a prediction are not
    scored (CIDEr-D's document frequencies then come from the scored clips only, as in
    pycocoevalcap). Corpus values are pycocoevalcap 1.2's.
    """
    return score_batch(
        {"": (predictions, references)},
        metrics=metrics,
        spice_dir=spice_dir,
        java=java,
        bertscore_cfg=bertscore_cfg,
    )[""]


def score_batch(
    jobs: Mapping[str, tuple[Mapping[str, str], Mapping[str, Sequence[str]]]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    spice_dir: str | Path | None = None,
    java: str = "java",
    bertscore_cfg: Any = None,
) -> dict[str, MetricsResult]:
    """Score several systems (name -> (predictions, references)) with one tokenizer JVM, one
    METEOR JVM and one SPICE JVM in all. Each system is scored as its own corpus, exactly as
    :func:`score` would score it alone.
    """
    families = _expand(metrics)
    prepared = {name: _prepare(name, preds, refs) for name, (preds, refs) in jobs.items()}
    unavailable: dict[str, str] = {}
    spice_jars = _spice_jars(families, spice_dir, unavailable)
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in prepared}
    corpus: dict[str, dict[str, float]] = {name: {} for name in prepared}
    if any(f in _COCO_FAMILIES for f in families):
        _score_coco(families, prepared, java, spice_jars, scores, corpus)
    if "bertscore" in families:
        reason = _bertscore(prepared, bertscore_cfg, scores, corpus)
        if reason:
            unavailable["bertscore"] = reason
    return _results(prepared, metric_keys(families), scores, corpus, unavailable)


def _spice_jars(
    families: Sequence[str], spice_dir: str | Path | None, unavailable: dict[str, str]
) -> list[Path] | None:
    """The CoreNLP jars SPICE needs, or None (then SPICE and SPIDEr go to ``unavailable``)."""
    if "spice" not in families:
        return None
    jars, reason = find_corenlp_jars(spice_dir)
    if jars is None:
        unavailable["spice"] = reason
        if "spider" in families:
            unavailable["spider"] = f"SPIDEr is the mean of CIDEr-D and SPICE; {reason}"
    return jars


def _score_coco(
    families: Sequence[str],
    prepared: Mapping[str, _Job],
    java: str,
    spice_jars: list[Path] | None,
    scores: dict[str, dict[str, list[float]]],
    corpus: dict[str, dict[str, float]],
) -> None:
    """The COCO metrics of every job: one tokenizer, one METEOR and one SPICE JVM in all."""
    java_exe = _check_java(java)
    meteor = _MeteorProcess(java_exe) if "meteor" in families else None  # loads while we tokenize
    try:
        tokenized = _tokenize(java_exe, prepared)
        spice_run = None
        if spice_jars is not None:
            spice_run = _SpiceRun(java_exe, spice_jars, tokenized)
        try:
            _score_python_and_meteor(families, tokenized, meteor, scores, corpus)
            if spice_run is not None:
                _add_spice(families, spice_run.result(), scores, corpus)
        finally:
            if spice_run is not None:
                spice_run.close()
    finally:
        if meteor is not None:
            meteor.close()


def _score_python_and_meteor(
    families: Sequence[str],
    tokenized: _Tokenized,
    meteor: _MeteorProcess | None,
    scores: dict[str, dict[str, list[float]]],
    corpus: dict[str, dict[str, float]],
) -> None:
    """METEOR talks to its JVM from a thread (waiting on a pipe frees the GIL) while the
    pure-Python scorers run here."""
    m_out: dict[str, Any] = {}
    m_thread = None
    if meteor is not None:
        m_thread = threading.Thread(target=_capture, args=(meteor.score, tokenized, m_out))
        m_thread.start()
    try:
        for name, (gts, res) in tokenized.items():
            _score_python(families, gts, res, scores[name], corpus[name])
    finally:
        if m_thread is not None:
            m_thread.join()
    if "error" in m_out:
        raise m_out["error"]
    for name, (m_corpus, m_items) in m_out.get("value", {}).items():
        corpus[name]["meteor"] = m_corpus
        scores[name]["meteor"] = m_items


def _add_spice(
    families: Sequence[str],
    spice: Mapping[str, list[float]],
    scores: dict[str, dict[str, list[float]]],
    corpus: dict[str, dict[str, float]],
) -> None:
    """SPICE per job (and SPIDEr, the mean of CIDEr-D and SPICE, when asked for)."""
    for name, s_items in spice.items():
        # spice/spice.py: np.mean over per-image "All" F-scores (NaN propagates).
        corpus[name]["spice"] = float(np.mean(np.array(s_items)))
        scores[name]["spice"] = s_items
        if "spider" in families:
            c_items = scores[name]["cider_d"]
            corpus[name]["spider"] = (corpus[name]["cider_d"] + corpus[name]["spice"]) / 2
            scores[name]["spider"] = [(c + s) / 2 for c, s in zip(c_items, s_items)]


def _results(
    prepared: Mapping[str, _Job],
    keys: Sequence[str],
    scores: dict[str, dict[str, list[float]]],
    corpus: dict[str, dict[str, float]],
    unavailable: Mapping[str, str],
) -> dict[str, MetricsResult]:
    results: dict[str, MetricsResult] = {}
    for name, job in prepared.items():
        per_clip = {
            cid: {k: float(scores[name][k][i]) for k in keys if k in scores[name]}
            for i, cid in enumerate(job.ids)
        }
        results[name] = MetricsResult(
            corpus={k: (float(corpus[name][k]) if k in corpus[name] else None) for k in keys},
            per_clip=per_clip,
            unavailable={k: v for k, v in unavailable.items() if k in keys},
            n=len(job.ids),
        )
    return results


def _capture(fn: Callable[..., Any], arg: Any, out: dict[str, Any]) -> None:
    """Run ``fn(arg)`` in a thread, keeping its value or exception for the caller."""
    try:
        out["value"] = fn(arg)
    except BaseException as e:  # re-raised in the calling thread
        out["error"] = e


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    ids: list[str]
    preds: list[str]
    refs: list[list[str]]


def _prepare(
    name: str, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> _Job:
    """Check types and coverage; one MetricsError listing the first problems."""
    what = f"system {name!r}: " if name else ""
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise MetricsError(
            f"{what}predictions and references must be mappings of clip id -> caption(s)"
        )
    if not predictions:
        raise MetricsError(f"{what}no predictions to score")
    problems: list[str] = []
    ids, preds, refs = [], [], []
    for cid, cap in predictions.items():
        if not isinstance(cap, str):
            problems.append(f"prediction for {cid!r} is {type(cap).__name__}, not text")
            continue
        ref = references.get(cid)
        if ref is None:
            problems.append(f"no references for {cid!r}")
            continue
        if isinstance(ref, str) or not ref or not all(isinstance(r, str) for r in ref):
            problems.append(f"references for {cid!r} must be a non-empty list of strings")
            continue
        ids.append(str(cid))
        preds.append(cap)
        refs.append(list(ref))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise MetricsError(
            f"{what}{len(problems)} bad prediction(s): {'; '.join(problems[:5])}{more}"
        )
    return _Job(ids, preds, refs)


@functools.lru_cache(maxsize=8)
def _which(java: str) -> str | None:
    return shutil.which(java)


def _check_java(java: str) -> str:
    exe = _which(java)
    if exe is None:
        raise MetricsError(
            f"Java not found ({java!r}): the PTB tokenizer, METEOR and SPICE need a Java runtime "
            "(e.g. `apt-get install openjdk-17-jre-headless`, or pass the path to `java`)"
        )
    return exe


@functools.lru_cache(maxsize=8)
def _java_major(java: str) -> int:
    """Major version of a Java runtime ("1.8.0_101" -> 8, "17.0.15" -> 17); 8 if unknown."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 8
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return 8
    major = int(m.group(1))
    return int(m.group(2) or 8) if major == 1 else major


def _timeout(n_items: int) -> float:
    return _JVM_BASE_TIMEOUT_S + _JVM_PER_ITEM_TIMEOUT_S * n_items


def _tail(path: Path | None, text: str = "") -> str:
    """Last non-empty line of a JVM's stderr, for a one-line error."""
    if path is not None:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


# ----------------------------------------------------------------------------------------------
# PTB tokenizer (tokenizer/ptbtokenizer.py, run once over every distinct caption)
# ----------------------------------------------------------------------------------------------

_Tokenized = dict[str, tuple[dict[str, list[str]], dict[str, list[str]]]]


def _tokenize(java: str, jobs: Mapping[str, _Job]) -> _Tokenized:
    """PTB-tokenise every caption of every job -> name -> (gts, res), as COCOEvalCap builds them."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    distinct: dict[str, int] = {}
    for job in jobs.values():
        for text in job.preds:
            distinct.setdefault(text, len(distinct))
        for refs in job.refs:
            for text in refs:
                distinct.setdefault(text, len(distinct))
    sentences = [_LINE_BREAKS.sub(" ", s) for s in distinct]
    jar = _pycoco_dir("tokenizer") / STANFORD_CORENLP_3_4_1_JAR
    with tempfile.TemporaryDirectory(prefix="audiocap-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_bytes("\n".join(sentences).encode())
        cmd = [java, "-cp", str(jar), _PTB_CLASS, *_PTB_ARGS, str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=_timeout(len(sentences)))
        except subprocess.TimeoutExpired as e:
            raise MetricsError("the PTB tokenizer (Java) timed out") from e
        except OSError as e:
            raise MetricsError(f"could not start Java for the PTB tokenizer: {e}") from e
    if proc.returncode != 0:
        raise MetricsError(
            f"the PTB tokenizer failed (exit {proc.returncode}): "
            f"{_tail(None, proc.stderr.decode(errors='replace'))}"
        )
    lines = proc.stdout.decode(errors="replace").split("\n")
    if len(lines) < len(sentences) or any(ln.strip() for ln in lines[len(sentences) :]):
        raise MetricsError(
            f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions "
            "(unexpected output from Java)"
        )
    punct = set(PUNCTUATIONS)
    tokens = [
        " ".join(w for w in ln.rstrip().split(" ") if w not in punct)
        for ln in lines[: len(sentences)]
    ]
    lookup = {text: tokens[i] for text, i in distinct.items()}
    out: _Tokenized = {}
    for name, job in jobs.items():
        gts = {cid: [lookup[r] for r in refs] for cid, refs in zip(job.ids, job.refs)}
        res = {cid: [lookup[p]] for cid, p in zip(job.ids, job.preds)}
        out[name] = (gts, res)
    return out


# ----------------------------------------------------------------------------------------------
# BLEU, ROUGE-L, CIDEr-D: pycocoevalcap's own Python scorers
# ----------------------------------------------------------------------------------------------


def _score_python(
    families: Sequence[str],
    gts: dict[str, list[str]],
    res: dict[str, list[str]],
    items: dict[str, list[float]],
    corpus: dict[str, float],
) -> None:
    if "bleu" in families:
        from pycocoevalcap.bleu.bleu import Bleu

        # verbose=0: BleuScorer prints its n-gram totals to stdout otherwise.
        c, per = Bleu(4).compute_score(gts, res, verbose=0)
        for k, cv, pv in zip(BLEU_KEYS, c, per):
            corpus[k] = float(cv)
            items[k] = [float(v) for v in pv]
    if "rouge_l" in families:
        from pycocoevalcap.rouge.rouge import Rouge

        c, per = Rouge().compute_score(gts, res)
        corpus["rouge_l"], items["rouge_l"] = float(c), [float(v) for v in per]
    if "cider_d" in families:
        from pycocoevalcap.cider.cider import Cider

        c, per = Cider().compute_score(gts, res)
        corpus["cider_d"], items["cider_d"] = float(c), [float(v) for v in per]


# ----------------------------------------------------------------------------------------------
# METEOR 1.5 (meteor/meteor.py's -stdio protocol, one JVM, pipelined)
# ----------------------------------------------------------------------------------------------


def _meteor_line(hyp: str, refs: Sequence[str]) -> str:
    """meteor.py's ``_stat`` request line, byte for byte."""
    hyp = hyp.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(refs), hyp))


class _MeteorProcess:
    """A METEOR 1.5 JVM in -stdio mode, started early because it takes ~10 s to load."""

    def __init__(self, java: str) -> None:
        meteor_dir = _pycoco_dir("meteor")
        self._err: IO[bytes] = tempfile.TemporaryFile()
        cmd = [java, "-jar", _METEOR_HEAP, "meteor-1.5.jar", *_METEOR_ARGS]
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=meteor_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err
            )
        except OSError as e:
            self._err.close()
            raise MetricsError(f"could not start Java for METEOR: {e}") from e

    def _fail(self, what: str) -> MetricsError:
        self.proc.kill()
        self.proc.wait()
        self._err.seek(0)
        msg = _tail(None, self._err.read().decode(errors="replace"))
        return MetricsError(f"METEOR {what} (exit {self.proc.returncode}): {msg}")

    def _exchange(self, lines: list[str], n_answers: int) -> list[str]:
        """Write ``lines`` from a thread (a full pipe would deadlock) while reading answers."""
        payload = "".join(f"{ln}\n" for ln in lines).encode()
        stdin = self.proc.stdin
        assert stdin is not None and self.proc.stdout is not None

        def write() -> None:
            try:
                stdin.write(payload)
                stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the reader sees EOF and reports the JVM's own error

        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            self.proc.kill()

        writer = threading.Thread(target=write, daemon=True)
        watchdog = threading.Timer(_timeout(n_answers), expire)
        writer.start()
        watchdog.start()
        try:
            answers = []
            for _ in range(n_answers):
                raw = self.proc.stdout.readline()
                if not raw:
                    raise self._fail("timed out" if fired else "stopped before answering")
                answers.append(raw.decode(errors="replace").strip())
        finally:
            watchdog.cancel()
            writer.join(timeout=5)
        return answers

    def score(self, tokenized: _Tokenized) -> dict[str, tuple[float, list[float]]]:
        """name -> (corpus METEOR, per-clip METEOR), via SCORE stats then one EVAL per system."""
        distinct: dict[tuple[str, tuple[str, ...]], int] = {}
        for gts, res in tokenized.values():
            for cid, hyp in res.items():
                distinct.setdefault((hyp[0], tuple(gts[cid])), len(distinct))
        stats = self._exchange([_meteor_line(h, r) for h, r in distinct], len(distinct))
        for s in stats:
            if not s or not _is_numbers(s):
                raise self._fail(f"returned unexpected statistics {s[:80]!r}")
        eval_lines, sizes = [], []
        for gts, res in tokenized.values():
            keys = [distinct[(res[cid][0], tuple(gts[cid]))] for cid in res]
            eval_lines.append("EVAL" + "".join(f" ||| {stats[k]}" for k in keys))
            sizes.append(len(keys))
        answers = self._exchange(eval_lines, sum(n + 1 for n in sizes))
        try:
            values = [float(a) for a in answers]
        except ValueError:
            raise self._fail("returned a non-numeric score") from None
        out: dict[str, tuple[float, list[float]]] = {}
        pos = 0
        for name, n in zip(tokenized, sizes):
            # meteor.py reads one score per segment, then the corpus score.
            out[name] = (values[pos + n], values[pos : pos + n])
            pos += n + 1
        return out

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def _is_numbers(line: str) -> bool:
    try:
        [float(x) for x in line.split()]
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# SPICE (spice/spice.py, with the jars looked for instead of downloaded)
# ----------------------------------------------------------------------------------------------


def find_corenlp_jars(spice_dir: str | Path | None = None) -> tuple[list[Path] | None, str]:
    """Locate the Stanford CoreNLP 3.6.0 jars SPICE needs -> (jar paths, "") or (None, reason).

    Looked for in ``spice_dir`` (or its ``lib/``), else ``$AUDIOCAP_SPICE_DIR``, else
    pycocoevalcap's ``spice/lib``. A folder named explicitly that lacks them is a MetricsError.
    """
    explicit = spice_dir if spice_dir is not None else os.environ.get(SPICE_DIR_ENV) or None
    if explicit is not None:
        root = Path(explicit).expanduser()
        for folder in (root, root / "lib"):
            jars = [folder / j for j in CORENLP_JARS]
            if all(j.is_file() for j in jars):
                return jars, ""
        origin = "spice_dir" if spice_dir is not None else f"${SPICE_DIR_ENV}"
        raise MetricsError(
            f"{origin} {root} does not hold {' and '.join(CORENLP_JARS)} (needed by SPICE)"
        )
    lib = _pycoco_dir("spice") / "lib"
    jars = [lib / j for j in CORENLP_JARS]
    if all(j.is_file() for j in jars):
        return jars, ""
    return None, (
        "SPICE needs Stanford CoreNLP 3.6.0 (stanford-corenlp-3.6.0.jar and -models.jar from "
        f"stanford-corenlp-full-2015-12-09.zip): put them in a folder and set ${SPICE_DIR_ENV} "
        "(or pass spice_dir / --spice-dir)"
    )


class _SpiceRun:
    """One SPICE JVM over every (system, clip), started in the background."""

    def __init__(self, java: str, corenlp: list[Path], tokenized: _Tokenized) -> None:
        spice_dir = _pycoco_dir("spice")
        self._tmp = tempfile.TemporaryDirectory(prefix="audiocap-spice-")
        tmp = Path(self._tmp.name)
        self._distinct: dict[tuple[str, tuple[str, ...]], int] = {}
        for gts, res in tokenized.values():
            for cid, hyp in res.items():
                self._distinct.setdefault((hyp[0], tuple(gts[cid])), len(self._distinct))
        self._tokenized = tokenized
        items = [
            {"image_id": i, "test": h, "refs": list(r)} for (h, r), i in self._distinct.items()
        ]
        in_file, self._out = tmp / "input.json", tmp / "output.json"
        in_file.write_text(json.dumps(items, indent=2))
        cache = cache_dir() / "spice-cache"
        cache.mkdir(parents=True, exist_ok=True)
        # An explicit class path instead of pycocoevalcap's `-jar`, so the CoreNLP jars may live
        # outside site-packages; spice-1.0.jar's manifest Class-Path still brings in spice/lib.
        classpath = [
            spice_dir / "spice-1.0.jar",
            *corenlp,
            *sorted((spice_dir / "lib").glob("*.jar")),
        ]
        opens = _SPICE_ADD_OPENS if _java_major(java) >= 9 else ()
        cmd = [
            java, _SPICE_HEAP, *opens, "-cp", os.pathsep.join(map(str, classpath)), _SPICE_CLASS,
            str(in_file), "-cache", str(cache), "-out", str(self._out), *_SPICE_FLAGS,
        ]  # fmt: skip
        self._err_path = tmp / "stderr.txt"
        self._err = open(self._err_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, cwd=spice_dir, stdin=subprocess.DEVNULL,
                                         stdout=self._err, stderr=self._err)  # fmt: skip
        except OSError as e:
            self.close()
            raise MetricsError(f"could not start Java for SPICE: {e}") from e

    def result(self) -> dict[str, list[float]]:
        """name -> per-clip SPICE F-score ("All"), NaN where SPICE gives none."""
        try:
            rc = self.proc.wait(timeout=_timeout(len(self._distinct)) * 4)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise MetricsError("SPICE (Java) timed out") from None
        self._err.flush()
        if rc != 0:
            raise MetricsError(f"SPICE failed (exit {rc}): {_tail(self._err_path)}")
        try:
            rows = json.loads(self._out.read_text())
            by_id = {int(r["image_id"]): _float_or_nan(r["scores"]["All"]["f"]) for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MetricsError(f"SPICE wrote unreadable output ({type(e).__name__}: {e})") from e
        missing = set(self._distinct.values()) - set(by_id)
        if missing:
            raise MetricsError(
                f"SPICE output lacks {len(missing)} of {len(self._distinct)} captions"
            )
        return {
            name: [by_id[self._distinct[(res[cid][0], tuple(gts[cid]))]] for cid in res]
            for name, (gts, res) in self._tokenized.items()
        }

    def close(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        self._tmp.cleanup()


def _float_or_nan(v: Any) -> float:
    """spice.py's float_convert: None (no tuples) becomes NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------
# BERTScore column (bertscore.multi_ref_bertscore, imported lazily)
# ----------------------------------------------------------------------------------------------


def _bertscore(
    jobs: Mapping[str, _Job],
    cfg: Any,
    scores: dict[str, dict[str, list[float]]],
    corpus: dict[str, dict[str, float]],
) -> str:
    """Fill the bertscore column for every job in one call; return a reason if unavailable."""
    try:
        from ..text import bertscore
    except ImportError as e:
        return f"BERTScore needs audiocap's bertscore module ({e})"
    fn: Callable[..., Any] | None = getattr(bertscore, "multi_ref_bertscore", None)
    if fn is None:
        return "BERTScore needs bertscore.multi_ref_bertscore, which this build lacks"
    if cfg is None:
        cfg = bertscore.BertScoreConfig()
    cands = [p for job in jobs.values() for p in job.preds]
    refs = [r for job in jobs.values() for r in job.refs]
    from ..errors import AudiocapError

    try:
        values = np.asarray(fn(cands, refs, cfg), dtype=np.float64).reshape(-1)
    except AudiocapError as e:
        return f"BERTScore unavailable: {e}"
    if values.shape[0] != len(cands):
        raise MetricsError(f"BERTScore returned {values.shape[0]} scores for {len(cands)} captions")
    pos = 0
    for name, job in jobs.items():
        part = values[pos : pos + len(job.ids)]
        pos += len(job.ids)
        scores[name]["bertscore"] = part.tolist()
        corpus[name]["bertscore"] = float(part.mean())
    return ""
