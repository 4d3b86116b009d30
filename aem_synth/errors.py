"""Exception classes.  Messages name the case, the file, the rule and the value."""

from __future__ import annotations

__all__ = [
    "AemSynthError",
    "DatasetError",
    "CaseError",
    "ShardError",
    "BuildError",
    "OutputPathError",
]


class AemSynthError(Exception):
    """Base class of every error this package raises on purpose."""


class DatasetError(AemSynthError, ValueError):
    """A dataset root as a whole cannot be used (missing, empty, unknown layout...)."""


class CaseError(AemSynthError, ValueError):
    """One case cannot be used; the message starts with the case id."""

    def __init__(self, case_id: str, message: str) -> None:
        super().__init__(f"{case_id}: {message}")
        self.case_id = case_id
        self.reason = message


class ShardError(AemSynthError, ValueError):
    """A shard store or shard file is invalid, incomplete or inconsistent."""


class BuildError(AemSynthError, RuntimeError):
    """The build cannot continue (e.g. a bad case under ``--strict``)."""


class OutputPathError(AemSynthError, ValueError):
    """An output location cannot be used (a file, under a file, not writable)."""
