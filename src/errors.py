"""The one exception type for user mistakes: entry scripts print its message on one line and exit 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, key, value, file); the message says what and how."""
