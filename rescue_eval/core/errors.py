class UsageError(ValueError):
    """A mistake the user can fix (config key, path, device, world size): the CLI prints its
    one-sentence message without a traceback."""


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass by itself: a service unreachable or overloaded, a timeout, device
    memory exhausted (torch's OutOfMemoryError). The next run retries a sample failed by one
    (run.retry_failed); a backend marks such errors with `transient = True`."""
    return bool(getattr(exc, "transient", False)) or type(exc).__name__ == "OutOfMemoryError"


class FatalError(RuntimeError):
    """Not a sample's failure but the job's (e.g. a rank is gone): never recorded as a failed
    sample, the job stops and a rerun resumes."""
