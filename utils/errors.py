"""The one exception type for mistakes a user can fix (bad config, missing file, wrong checkpoint).

Entry points catch it and print its message as a single line, without a traceback, exiting non-zero.
"""

import re

__all__ = ["UserError"]

# How torch re-raises an exception of a DataLoader worker (or pin-memory thread) in the main process:
# ``exc_type("Caught <Name> in <where>.\nOriginal Traceback (most recent call last):\n...<Name>: <msg>\n")``
# (torch.utils._utils.ExceptionWrapper.reraise).
_TORCH_RERAISE = re.compile(r"Caught \w+ in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


class UserError(Exception):
    """An error caused by the user's input; its message names the culprit (file, key or path).

    Raised inside a DataLoader worker (e.g. a corrupt image), it reaches the main process rebuilt by torch
    from the worker's formatted traceback; the constructor recovers the original message from that text,
    so the user still sees one clean message and no traceback.
    """

    def __init__(self, message: str = ""):
        super().__init__(_original_message(message, type(self)))


def _original_message(message: str, cls: type) -> str:
    """``message`` itself, or, for torch's re-raise text, the message of the exception it wraps."""
    if not isinstance(message, str) or not _TORCH_RERAISE.match(message):
        return message
    # the traceback ends with "<module>.<qualname>: <original message>\n" (the message may span lines)
    header = f"\n{cls.__module__}.{cls.__qualname__}: "
    start = message.rfind(header)
    if start < 0:
        return message.rstrip("\n").rsplit("\n", 1)[-1]
    return message[start + len(header):].rstrip("\n")
