"""The single exception type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """A data set could not be found, read or validated.

    The message is always one line that names the file (and row/column where that applies) and
    says what was expected, so a command-line user can act on it without a traceback. Lower-level
    exceptions (numpy, PIL, pickle, OS) are chained with ``raise ... from`` rather than replaced.
    """

    def __init__(self, message: str) -> None:
        # Embedded exception texts can hold newlines; collapse them so the message stays one line.
        super().__init__(" ".join(str(message).split()))
