"""The one exception the data layer raises for anything that goes wrong while finding or reading data."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(Exception):
    """A dataset (or event file) is missing, corrupt, unknown, or was asked for with invalid options.

    The message always names the path that was tried (when there is one) and how to fix the problem, so a
    command-line tool can print it as is.
    """
