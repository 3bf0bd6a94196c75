"""Token ids of texts, tokenised once per request: the checks count them and the forward pass pads them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoded:
    """Per text: its token ids as the model sees them (specials in, truncated, not padded), and its length whole:
    the tokenizer's own count, specials in, before any cut (a text cut to the model's maximum sequence has more
    than its ids). `lengths` omitted: no text was cut."""

    ids: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.lengths:
            object.__setattr__(self, "lengths", tuple(len(row) for row in self.ids))
        if len(self.lengths) != len(self.ids):
            raise ValueError(f"{len(self.lengths)} lengths for {len(self.ids)} texts")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> Encoded:
        return Encoded(self.ids[part], self.lengths[part])

    @property
    def truncated(self) -> list[bool]:
        """Per text: it was cut (its ids hold fewer tokens than the text has)."""
        return [whole > len(row) for whole, row in zip(self.lengths, self.ids, strict=True)]

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids)

    def count(self, token_id: int) -> int:
        return sum(row.count(token_id) for row in self.ids)

    @staticmethod
    def join(parts: list[Encoded]) -> Encoded:
        return Encoded(tuple(row for part in parts for row in part.ids),
                       tuple(n for part in parts for n in part.lengths))

    def length_groups(self, min_rows: int = 8, slack: float = 0.2) -> list[list[int]]:
        """Row indices in order of length, cut into groups that each pad to their own longest row.

        A group closes (once it holds `min_rows`) when padding it to the next, longer row would
        make its padded tokens exceed (1 + slack) x its real tokens: a batch of short texts and one
        long one no longer pays the long one's width for every row (the encoder's cost is rows x width).
        """
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        groups: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i in order:
            n = len(self.ids[i])
            if len(current) >= min_rows and n * (len(current) + 1) > (1 + slack) * (tokens + n):
                groups.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += n
        return groups + [current] if current else groups
