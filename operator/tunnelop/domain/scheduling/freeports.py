"""The free ports of one relay and protocol family, with next-fit allocation.

A port is handed out by walking forward from a cursor, so a port given back is reused only
after the rest of the range (a visitor who remembers the old tunnel's port reaches the new
tunnel as late as possible). Finding the next free port must not walk the taken ones: with
10,000 tunnels on a 10,000-port relay that would be quadratic. The set is therefore a
two-level bitmap: blocks of 1,024 ports, and a summary of the blocks that have a free port
(at most 64 for the 65,535 ports there are), so a lookup is a few integer operations on
small numbers, however full the relay is.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnelop.api.v1alpha1 import PortSpan

BLOCK_BITS = 1024


def _lowest_bit(bits: int) -> int:
    """The index of the lowest set bit of a positive integer."""
    return (bits & -bits).bit_length() - 1


class FreePorts:
    """A set of free ports within a span, with `next_fit()` from a moving cursor."""

    def __init__(self, span: PortSpan, free: Iterable[PortSpan] = ()) -> None:
        self.span = span
        self._blocks = [0] * (len(span) // BLOCK_BITS + 1)
        self._summary = 0  # bit b set: block b has a free port
        self._count = 0
        self._cursor = 0  # offset in span where the next search starts
        for run in free:
            self._add_run(run)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __contains__(self, port: object) -> bool:
        if not isinstance(port, int) or port not in self.span:
            return False
        block, bit = divmod(port - self.span.first, BLOCK_BITS)
        return bool(self._blocks[block] >> bit & 1)

    @property
    def cursor(self) -> int:
        """The port where the next search starts."""
        return self.span.first + self._cursor

    def resume_at(self, port: int) -> None:
        """Start the next search at `port` (kept when the span is rebuilt); ignored outside
        the span."""
        if port in self.span:
            self._cursor = port - self.span.first

    def add(self, port: int) -> None:
        """Mark a port of the span free (ports outside the span are ignored)."""
        if port in self.span and port not in self:
            block, bit = divmod(port - self.span.first, BLOCK_BITS)
            self._blocks[block] |= 1 << bit
            self._summary |= 1 << block
            self._count += 1

    def discard(self, port: int) -> None:
        """Mark a port taken (or not allowed)."""
        if port in self:
            block, bit = divmod(port - self.span.first, BLOCK_BITS)
            self._blocks[block] ^= 1 << bit
            if not self._blocks[block]:
                self._summary ^= 1 << block
            self._count -= 1

    def next_fit(self) -> int | None:
        """The first free port at or after the cursor, wrapping around; None when none is
        free. Moves the cursor past it, without taking it: `discard` does that."""
        offset = self._find(self._cursor)
        if offset is None:
            return None
        self._cursor = offset + 1 if offset + 1 < len(self.span) else 0
        return self.span.first + offset

    def _find(self, start: int) -> int | None:
        if not self._count:
            return None
        block, bit = divmod(start, BLOCK_BITS)
        rest = self._blocks[block] >> bit
        if rest:
            return start + _lowest_bit(rest)
        later = self._summary >> (block + 1)
        # Past the last block with a free port, wrap around to the first one.
        block = block + 1 + _lowest_bit(later) if later else _lowest_bit(self._summary)
        return block * BLOCK_BITS + _lowest_bit(self._blocks[block])

    def _add_run(self, run: PortSpan) -> None:
        first = max(run.first, self.span.first) - self.span.first
        last = min(run.last, self.span.last) - self.span.first
        while first <= last:
            block, bit = divmod(first, BLOCK_BITS)
            width = min(last - first + 1, BLOCK_BITS - bit)
            mask = ((1 << width) - 1) << bit
            self._count += width - (self._blocks[block] & mask).bit_count()
            self._blocks[block] |= mask
            self._summary |= 1 << block
            first += width
