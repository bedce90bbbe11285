"""audiocap: batch audio captioning guided by retrieved similar captions.

Koizumi et al., "Audio captioning using pre-trained large-scale language model guided by
audio-based similar caption retrieval" (2020). The library imports without typer or rich;
``audiocap_cli.cli`` is the command-line front end; :func:`load` the Python one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from .pipeline.captioner import Captioner

from .version import __version__

__all__ = ["__version__", "load"]


def load(model: str | Path | None = None, **options: Any) -> Captioner:
    """A :class:`~audiocap_cli.pipeline.captioner.Captioner` of ``model``, resolved as ``audiocap
    caption -m`` does it (a model directory or a name; None: ``$AUDIOCAP_MODEL``, else the
    shipped default, built into the cache on first use).

    ``options``: fields of :class:`~audiocap_cli.pipeline.captioner.CaptionOptions` (``batch_size``,
    ``k``, ``long_audio``, ``hop_seconds``, ``device``, ``fast``, ``tags``, ``decoding``) or of
    :class:`~audiocap_cli.generation.decoding.DecodingOptions` (``beam_size``, ``select``, ...), which go
    into its ``decoding``; unnamed ones keep ``caption``'s defaults.

    >>> cap = audiocap_cli.load()
    >>> for record in cap.caption(["dog.wav"]):
    ...     print(record["caption"])
    """
    import dataclasses

    from .pipeline.captioner import Captioner, CaptionOptions
    from .pipeline.registry import resolve

    top = {f.name for f in dataclasses.fields(CaptionOptions)}
    search = {f.name for f in dataclasses.fields(CaptionOptions().decoding)} - top
    unknown = sorted(set(options) - top - search)
    if unknown:
        raise TypeError(f"load() got unknown options: {', '.join(unknown)}")
    opts = CaptionOptions(**{k: v for k, v in options.items() if k in top})
    if changes := {k: v for k, v in options.items() if k in search}:
        opts = dataclasses.replace(opts, decoding=dataclasses.replace(opts.decoding, **changes))
    return Captioner(resolve(model), opts)
