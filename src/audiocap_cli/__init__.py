"""audiocap: batch audio captioning guided by retrieved similar captions.

Koizumi et al., "Audio captioning using pre-trained large-scale language model guided by
audio-based similar caption retrieval" (2020). The library imports without typer or rich;
``audiocap_cli.cli`` is the command-line front end.
"""

__version__ = "0.1.0"
