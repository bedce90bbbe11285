"""Domain errors. Each carries a message fit to show a user on one line.

The library raises these; the CLI turns them into ``audiocap: error: <message>`` on stderr
and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class AudiocapError(Exception):
    """Base of every error audiocap raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AudioError(AudiocapError):
    """An audio file could not be used. ``path`` and ``cause`` say which and why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class AudioNotFoundError(AudioError):
    """The file does not exist (or is not a regular file)."""


class UnsupportedAudioError(AudioError):
    """The file is not audio soundfile can decode (text renamed .wav, unknown container...)."""


class EmptyAudioError(AudioError):
    """The file decodes to zero samples or zero channels."""


class TooShortAudioError(EmptyAudioError):
    """The file decodes to fewer than ``audio.io.MIN_SECONDS`` of audio: too short to caption."""


class InvalidAudioError(AudioError):
    """The samples or header are unusable (NaN/inf samples, zero sample rate...)."""


class DatasetError(AudiocapError):
    """A manifest is malformed or names missing audio; lists every problem found. Exit status
    2: the dataset a command was given cannot be used (configuration, not a failed input)."""

    exit_code = 2

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        shown = "; ".join(self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"{self.source}: {len(self.problems)} problem(s): {shown}{more}")


class ConfigMismatchError(AudiocapError):
    """An artefact was built with a config that does not match the one in use (exit status 2:
    configuration)."""

    exit_code = 2


class ModelNotFoundError(AudiocapError):
    """A model, checkpoint, index or weight file is missing or damaged (exit status 2: nothing
    can run on it; status 1 is kept for "some inputs failed")."""

    exit_code = 2


class MetricsError(AudiocapError):
    """A metric could not be computed (Java missing, a jar failing, malformed predictions)."""


class UsageError(AudiocapError):
    """A bad value for an option or argument, found by the library (exit status 2, as for
    any command-line usage error)."""

    exit_code = 2
