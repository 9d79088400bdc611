"""The one exception type that bad input raises.

The CLI turns it into ``error: <message>`` on stderr and exit status 2; the Slicer
module shows ``str(error)`` to the user. Anything else escaping is a bug.
"""


class DistillSegError(Exception):
    """Bad or unusable input (missing file, non-overlapping CT/PET, no SUV fields...).

    The message names the problem and, where there is one, the file.
    """


class CancelledError(DistillSegError):
    """Long work (training, inference) stopped because the user asked for it."""
