"""What an inference request can fail with (torch-free, so the API imports it without a model)."""


class InputError(ValueError):
    """A client's text cannot be answered; the message says what to fix."""


class QueueFull(RuntimeError):
    """Too many requests wait for the model; the client should retry later."""


class NotReady(RuntimeError):
    """No model version is loaded yet."""


class TaskNotServed(InputError):
    """A task named in a prediction has no model served with the current version (404, or 409 while it is fitted)."""

    def __init__(self, message: str, pending: bool, damaged: bool = False) -> None:
        super().__init__(message)
        self.pending = pending  # registered, no model for the serving version yet
        self.damaged = damaged  # registered, its definition or model cannot be used


class WrongKind(InputError):
    """The version is the other kind of language model: fill-mask needs a masked LM, generation a causal one (409)."""


class NoChatTemplate(InputError):
    """The version's tokenizer has no chat template, so chat messages cannot be put into a prompt (409)."""
