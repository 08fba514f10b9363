"""How a download's missing bytes are cut into pieces for its connections to take."""

from __future__ import annotations

from dataclasses import dataclass

# Pieces are at least this large: smaller ones cost more in requests than they win.
MIN_PIECE = 4 * 1024 * 1024
# A stream runs on into the next free piece across at most this many bytes already held.
FOLLOW_SKIP = 1024 * 1024


@dataclass
class Piece:
    start: int  # the next byte this piece still needs
    end: int | None  # None: to the end of a blob of unknown size
    taken: bool = False

    @property
    def done(self) -> bool:
        return self.end is not None and self.start >= self.end


class Plan:
    """The pieces of a download: the gaps in what is held, each cut into up to `count` pieces."""

    def __init__(self, gaps: list[tuple[int, int | None]], count: int, first: tuple[int, int] | None = None) -> None:
        """Cut `gaps` into pieces of about 1/count of their total; `first`, a range the first
        request is already fetching, is the first piece, taken, and its connection's share."""
        total = sum(end - start for start, end in gaps if end is not None)
        size = max(-(-total // max(count, 1)), MIN_PIECE)
        self.pieces: list[Piece] = []
        if first is not None:
            self.pieces.append(Piece(*first, taken=True))
            gaps = [part for start, end in gaps for part in _without(start, end, first)]
        for start, end in gaps:
            if end is None:
                self.pieces.append(Piece(start, None))
                continue
            while start < end:
                self.pieces.append(Piece(start, min(start + size, end)))
                start += size
        # The first connection's next piece is the last one, the shorter remainder: its share.

    def take(self) -> Piece | None:
        """The first piece nobody has taken."""
        for piece in self.pieces:
            if not piece.taken and not piece.done:
                piece.taken = True
                return piece
        return None

    def take_at(self, offset: int) -> Piece | None:
        """The free piece that `offset` falls in, cut to start there."""
        for piece in self.pieces:
            if not piece.taken and piece.start <= offset and (piece.end is None or offset < piece.end):
                piece.taken, piece.start = True, offset
                return piece
        return None

    def follow(self, offset: int, *, can_skip_far: bool) -> Piece | None:
        """The next free piece for a stream now at `offset` to run on into, if it is close enough.

        A stream that cannot be asked for a range (the upstream ignores Range) runs on into
        any later piece, skipping what is held; one that can stops at a gap wider than FOLLOW_SKIP.
        """
        for piece in self.pieces:
            if piece.taken or piece.done or piece.start < offset:
                continue
            if piece.start - offset <= FOLLOW_SKIP or can_skip_far:
                piece.taken = True
                return piece
            return None
        return None

    def untake(self, piece: Piece) -> None:
        piece.taken = False

    def reaching(self, offset: int) -> int | None:
        """Where the connection that will fetch `offset` is now; None if none is on the way to it."""
        for piece in self.pieces:
            if piece.taken and piece.start <= offset and (piece.end is None or offset < piece.end):
                return piece.start
        return None


def _without(start: int, end: int | None, cut: tuple[int, int]) -> list[tuple[int, int | None]]:
    """The parts of [start, end) outside `cut`."""
    parts: list[tuple[int, int | None]] = []
    if start < cut[0]:
        parts.append((start, cut[0] if end is None else min(end, cut[0])))
    if end is None or end > cut[1]:
        parts.append((max(start, cut[1]), end))
    return [(s, e) for s, e in parts if e is None or s < e]
