"""The error every reader and writer of the conversion package raises.

It lives apart from the converters because our checkpoint directories
(`checkpoints`) and the converters that build on them (`hf`, `original`) both
raise it, and the command line turns exactly this error (and `OSError`) into a
one-line message instead of a traceback.
"""


class ConversionError(ValueError):
  """A checkpoint cannot be read or written as asked, or does not fit its model."""
