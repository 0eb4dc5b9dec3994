"""The errors a user can fix: one line on stderr naming the culprit and the fix, then exit 2
(common/cli.py: run_entry); anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input the user can fix: a setting, a file, a folder in use, an output that cannot be written."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""
