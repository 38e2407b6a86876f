"""Errors an operator can act on.

Everything raised for bad input (a missing file, a corrupt image, a wrong config key, a model fitted
with another backbone) is a `StreamVADError` whose message is one line naming the file or field and
what was expected. The CLI prints that line and exits non-zero, without a traceback; anything else
is a bug and keeps its traceback.
"""


class StreamVADError(Exception):
    """Base class: the message is the whole story, shown to the operator as is."""


class ConfigError(StreamVADError):
    """A configuration file or field is missing or invalid."""


class InputError(StreamVADError):
    """A source, image, video or dataset cannot be read as expected."""


class ModelMismatchError(StreamVADError):
    """A saved model does not fit the backbone or code that tries to load it."""
