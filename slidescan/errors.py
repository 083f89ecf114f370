"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class SlidescanError(Exception):
    """A user-facing error: bad input, unreadable file, missing option. Message is one line."""
