"""A request body being gathered: in memory while small, in a temporary file beyond.

`RequestBody` takes the decoded pieces of one request body as they arrive and
hands the whole body over once it is complete: as `bytes`, or as a temporary
file at position 0 once it grew past the spill threshold.  Nothing else knows
the difference.

Memory is bounded by the payload plus a small constant, however the client cut
it: a body that arrives in one piece is kept as that very `bytes` object, and
any further pieces are gathered into one growing buffer, never kept as a list
of small objects (250,000 two-byte chunks once cost 28 bytes per body byte).
Disk is bounded by the request-size limit the parser enforces.  Writing to the
temporary file may fail (a full disk): `OSError` goes to the caller, which
refuses the request; `discard()` never raises.  Sans-I/O like the rest of
`http/`: the temporary file comes from the `open_file` it is given.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO


class RequestBody:
    """The body of the request in progress (see the module docstring)."""

    __slots__ = ("spill_threshold", "size", "_piece", "_gathered", "_file", "_open_file")

    def __init__(self, spill_threshold: int, open_file: Callable[[], BinaryIO]) -> None:
        self.spill_threshold = spill_threshold
        self.size = 0
        self._piece: bytes | None = None  # the only piece so far (kept without a copy)
        self._gathered: io.BytesIO | None = None  # every piece, once there are two
        self._file: BinaryIO | None = None  # once the body passed the threshold
        self._open_file = open_file

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, data: bytes) -> None:
        """Add the next piece (non-empty).  Raises OSError if the spill file fails."""
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
        elif self.size > self.spill_threshold:
            self._spill(data)
        elif self._gathered is not None:
            self._gathered.write(data)
        elif self._piece is None:
            self._piece = data
        else:
            # BytesIO grows in place and getvalue() hands its buffer over uncopied.
            gathered = self._gathered = io.BytesIO()
            gathered.write(self._piece)
            gathered.write(data)
            self._piece = None

    def _spill(self, data: bytes) -> None:
        file = self._open_file()
        self._file = file  # from now on discard() closes it, whatever fails next
        if self._piece is not None:
            file.write(self._piece)
        elif self._gathered is not None:
            file.write(self._gathered.getbuffer())
        self._piece = self._gathered = None
        file.write(data)

    def take(self) -> bytes | BinaryIO:
        """The whole body: bytes, or the spill file rewound to its start.

        In-memory bodies are handed over and forgotten; a spill file stays
        owned by this object until `discard()` closes it.
        """
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            return self._file
        if self._piece is not None:
            body, self._piece = self._piece, None
        elif self._gathered is not None:
            body = self._gathered.getvalue()
            self._gathered = None
        else:
            body = b""
        self.size = 0
        return body

    def discard(self) -> None:
        """Forget the body and close the spill file, if any.  Never raises."""
        self.size = 0
        self._piece = self._gathered = None
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # closing flushes: a full disk may refuse even that
