"""The one base class for "the user gave us something we cannot use" (exit code 2 at the command line).

Everything else that goes wrong is a bug or an environment failure and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input: a model that cannot be found, an invalid stimulus set or config, an unwritable folder."""
