"""The one exception type for mistakes a user can fix (bad config, missing file, wrong checkpoint).

Entry points catch it and print its message as a single line, without a traceback, exiting non-zero.
"""


class UserError(Exception):
    """An error caused by the user's input; its message names the culprit (file, key or path)."""
