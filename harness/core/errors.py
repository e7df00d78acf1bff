"""User-facing errors: one line naming the problem and the fix."""


class SpeclabError(Exception):
    """A problem with the user's input or environment.

    The runner prints ``str(error)`` as a single line and exits non-zero, so the message must say both
    what is wrong and what to do about it.
    """

    exit_code = 2
