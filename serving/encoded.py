"""Token ids of texts, tokenised once per request: the checks count them and the forward pass pads them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoded:
    """Per text: its token ids as the model sees them (specials in, truncated, not padded)."""

    ids: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> Encoded:
        return Encoded(self.ids[part])

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids)

    def count(self, token_id: int) -> int:
        return sum(row.count(token_id) for row in self.ids)

    @staticmethod
    def join(parts: list[Encoded]) -> Encoded:
        return Encoded(tuple(row for part in parts for row in part.ids))
