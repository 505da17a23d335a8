"""The one exception type users see: a message that says what went wrong and what to do."""


class MetaexpError(Exception):
    """A user-facing error; the CLI prints its message as one paragraph and exits non-zero."""
