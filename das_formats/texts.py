"""The one rule for a text that reaches a tokenizer, wherever it comes from: an inference request, an end
task's train or eval file, a corpus. JSON can carry what UTF-8 cannot (a lone UTF-16 surrogate such as
"\\ud800"); the tokenizer then fails with a TypeError deep in a job, so such a text is refused where it
enters, with its place. Pure Python: the API checks uploads and requests with it."""

from __future__ import annotations


def unicode_problem(text: str) -> str | None:
    """What makes `text` unusable as model input (None when nothing does), said so it follows the text's name."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"is not valid Unicode at character {err.start} (a lone UTF-16 surrogate such as \\ud800); "
                "send UTF-8 text")
    return None


FILL_MASK_MAX_TOP_K = 50  # the most candidates a fill-mask answer lists per mask token (API bound, ONNX head's k)
