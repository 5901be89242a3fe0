"""The one error for a flag, setting or input that cannot work, raised by every job and tool
(``pipeline.build_records``, ``pipeline.score``, ``trainer.config``) before any work starts.

Entry points catch it and print its message, which names the flag or file, on one line
with exit status 2.
"""


class ConfigError(ValueError):
    """A flag, setting or input that cannot work; the message names it."""
