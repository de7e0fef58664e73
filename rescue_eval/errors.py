class UsageError(ValueError):
    """A mistake the user can fix (config key, path, device, world size): the CLI prints its
    one-sentence message without a traceback."""
