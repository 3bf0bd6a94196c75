"""What an inference request can fail with (torch-free, so the API imports it without a model)."""


class InputError(ValueError):
    """A client's text cannot be answered; the message says what to fix."""


class QueueFull(RuntimeError):
    """Too many requests wait for the model; the client should retry later."""


class NotReady(RuntimeError):
    """No model version is loaded yet."""
