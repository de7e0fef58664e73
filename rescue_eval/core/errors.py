class UsageError(ValueError):
    """A mistake the user can fix (config key, path, device, world size): the CLI prints its
    one-sentence message without a traceback."""


class FatalError(RuntimeError):
    """Not a sample's failure but the job's (e.g. a rank is gone): never recorded as a failed
    sample, the job stops and a rerun resumes."""
