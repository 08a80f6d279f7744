"""The base class of errors caused by user input (configs, files, ids).

Entry points catch :class:`MedrestoreError` and print its message as one line with a non-zero
exit code, instead of a traceback; anything else is a bug and keeps its traceback."""


class MedrestoreError(Exception):
    """An error in user input whose message says what was wrong and what was expected."""


class ConfigError(MedrestoreError, ValueError):
    """A config value that cannot work (names the key and what was expected)."""
