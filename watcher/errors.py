"""The exceptions trial watcher raises on purpose.

Each carries a message written for a person (one line, what and where) and the exit code
the CLI uses: 2 for usage and configuration errors, 1 for failures at run time.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base class: an error a user should see as one line, never as a traceback."""

    exit_code = 1


class ConfigError(WatcherError):
    """The config file or a command-line value is wrong; nothing was done."""

    exit_code = 2


class RegistryError(WatcherError):
    """ClinicalTrials.gov failed, refused or answered something that is not usable data."""


class StoreError(WatcherError):
    """The database could not be opened or is busy."""


class DeliveryError(WatcherError):
    """A digest could not be delivered."""

    # a message sent in several parts (a long digest split for a chat service): how many went out
    parts_sent = 0


class Cancelled(WatcherError):
    """The daemon is stopping: the job in flight gives up (its transaction rolls back)."""


class HistoryUnavailable(RegistryError):
    """The registry's version history (its internal API, not a contract) could not be used:
    refused, missing, rate limited, or not of the expected shape. Callers fall back to a plain
    diff; the message is one line with the reason.

    `study_only` when the trouble is with this study's history alone (none kept for it, an
    unexpected body): a sync goes on asking for the others. Otherwise the service itself is
    refusing, rate limiting or down, and a sync stops asking until the next one."""

    def __init__(self, message: str, study_only: bool = False) -> None:
        super().__init__(message)
        self.study_only = study_only
