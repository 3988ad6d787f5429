"""Text files (CSV, NDJSON, either gzipped) cut into blocks of whole lines, their lines counted.

:func:`line_blocks` reads a file (inflated by ISA-L on its own thread for gzip) into buffers
handed to the tasks that parse them (:class:`Block`, :class:`BlockBuffers`), and counts each
block's line ends, so the CSV and NDJSON readers number every row. The count runs over every
byte, on the one thread that also reads: a compiled pass takes eight bytes at a time (a
byte-wise zero test on the word XOR ``\\n``): ~0.17 ns a byte here, against ~0.35 ns for
numpy's compare and count (which also writes a byte per input byte).
"""

from __future__ import annotations

import io
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from heatmap._jit import kernel, readonly, warms, worth
from heatmap.ingest.options import WORKERS

T = TypeVar("T")
U8 = npt.NDArray[np.uint8]

_MIN_BLOCK = 64
_BYTES_PER_ROW = 16  # the block size before the first lines show how long a row is
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_NEWLINES = np.uint64(0x0A0A0A0A0A0A0A0A)
_BYTE_ONES = np.uint64(0x0101010101010101)


def _open(path: Path, compressed: bool) -> io.RawIOBase | io.BufferedIOBase:
    """A plain file unbuffered, or a gzip file inflated by ISA-L on its own thread (~2.5x
    zlib's speed; the reading thread then only cuts lines)."""
    if not compressed:
        return path.open("rb", buffering=0)
    from isal import igzip_threaded

    return igzip_threaded.open(path, "rb", threads=1)  # type: ignore[no-any-return]


class BlockBuffers:
    """The buffers blocks are read into, handed by the reading thread to the tasks that parse
    them and back when parsed: every byte is read from the file once, and the few buffers of
    a file are reused (a fresh one would be faulted in and zeroed by the kernel again)."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def take(self, size: int) -> bytearray:
        """A free buffer of at least ``size`` bytes (a new one if none is free)."""
        while True:
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                return bytearray(size)
            if len(buf) >= size:
                return buf  # a smaller one is dropped: never resized, it may still be read

    def give(self, buf: bytearray) -> None:
        """Return a buffer that nothing reads any more."""
        self._free.put(buf)


@dataclass(frozen=True)
class Block:
    """Whole lines of a text file: ``[start, end)`` of its (decompressed) bytes, held at the
    start of ``data`` (a buffer of ``buffers``, returned by :meth:`release`)."""

    data: bytearray
    start: int
    end: int
    first_row: int  # 1-based data-row number of the first line (a skipped header is row 0)
    lines: int  # a last line without a line end included
    buffers: BlockBuffers

    def read(self) -> pa.Buffer:
        """Return the block's bytes (no copy; valid until :meth:`release`)."""
        return pa.py_buffer(self.data)[: self.end - self.start]

    def release(self) -> None:
        """Hand the buffer back once the block is parsed (nothing may read it after)."""
        self.buffers.give(self.data)

    def parsed(self, parse: Callable[[pa.Buffer], T]) -> T:
        """Return ``parse(bytes)``, then hand the buffer back, whatever happened. ``parse``
        must keep no reference to the bytes (arrow's readers copy what they keep)."""
        try:
            return parse(self.read())
        finally:
            self.release()


def line_blocks(
    path: Path, compressed: bool, rows: int, skip_header: bool, workers: int = WORKERS
) -> Iterator[Block]:
    """Cut a text file into blocks of whole lines, about ``rows`` lines each.

    The block size follows from the first block's line length; a line longer than a block
    makes its block larger. The reading thread only reads into buffers and counts line ends
    (:func:`count_newlines`; both without the GIL), so the tasks parsing blocks run
    meanwhile; each block's buffer goes to its task, which hands it back when parsed.

    The last ``2 * workers`` blocks' worth of the file is cut into blocks a quarter of the
    size, so that the ``workers`` parsing tasks finish together rather than one idling while
    another parses a whole last block (a gzip file's size is its trailer's; see
    :func:`_text_size`).
    """
    buffers = BlockBuffers()
    total = _text_size(path, compressed)
    step = max(_MIN_BLOCK, rows * _BYTES_PER_ROW)
    if total is not None:  # a small file: no larger buffer than it (zeroing 64 MB takes 12 ms)
        step = min(step, max(_MIN_BLOCK, total + 1))
    win = buffers.take(step)
    fill = step
    newline = np.empty(step, dtype=bool)  # reused: a fresh array would fault in every page
    have = base = 0
    row, sized, eof, header = 1, False, False, skip_header
    with _open(path, compressed) as fh:
        while True:
            while have < fill and not eof:
                with memoryview(win) as mv:
                    n = fh.readinto(mv[have:fill])
                eof = not n
                have += n or 0
            if header:  # drop the header line
                cut = win.find(b"\n", 0, have) + 1
                if cut == 0 and not eof:
                    win, fill = _larger(win, have, 2 * len(win), buffers)
                    continue
                cut = cut or have
                win[: have - cut] = win[cut:have]
                have -= cut
                base += cut
                header = False
                continue
            end = have if eof else win.rfind(b"\n", 0, have) + 1
            if end == 0 and not eof:  # a line longer than the buffer: make it larger
                win, fill = _larger(win, have, 2 * len(win), buffers)
                continue
            if end:
                view = np.frombuffer(win, dtype=np.uint8, count=end)
                if len(newline) < end:
                    newline = np.empty(len(win), dtype=bool)
                lines = count_newlines(view, newline)
                lines += int(view[-1] != 10)
                del view  # no export of the buffer may outlive this (it is handed on)
                block = Block(win, base, base + end, row, lines, buffers)
                row += lines
            if eof:
                if end:
                    yield block
                return
            if not sized and end:
                sized = True  # from now on, about ``rows`` lines a block
                step = max(_MIN_BLOCK, rows * (end // max(1, lines)))
            fill = step
            if total is not None and 0 <= total - (base + end) <= 2 * workers * step:
                fill = max(_MIN_BLOCK, step // 4)  # the file's last blocks: smaller
            rest = have - end  # a line's start, carried to the next buffer
            fill = max(fill, rest + _MIN_BLOCK)
            nxt = buffers.take(fill)
            nxt[:rest] = win[end:have]
            win, have, base = nxt, rest, base + end
            if end:
                yield block


def _text_size(path: Path, compressed: bool) -> int | None:
    """The file's size as text: a plain file's, or the size a gzip file's trailer states (the
    last member's size modulo 4 GiB, so only where the file is too small to inflate past 4
    GiB at a ratio of 1:16; None otherwise). Only the last blocks' sizes depend on it."""
    size = path.stat().st_size
    if not compressed:
        return size
    if size < 18 or size * 16 >= 1 << 32:
        return None
    with path.open("rb") as fh:
        fh.seek(-4, io.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _larger(win: bytearray, have: int, size: int, buffers: BlockBuffers) -> tuple[bytearray, int]:
    """A buffer of ``size`` bytes holding the first ``have`` bytes of ``win`` (and its fill)."""
    bigger = buffers.take(size)
    bigger[:have] = win[:have]
    buffers.give(win)
    return bigger, size


def count_newlines(data: U8, scratch: npt.NDArray[np.bool_]) -> int:
    """Return how many ``\\n`` bytes ``data`` holds; ``scratch`` (a bool array at least as
    long, reused so its pages are not faulted in again) serves the numpy path, taken while the
    kernels are not loaded for a small block."""
    if worth(len(data)):
        return int(_newlines(*readonly(data)))
    return int(np.count_nonzero(np.equal(data, 10, out=scratch[: len(data)])))


@kernel
def _newlines(data: U8) -> np.int64:
    words = data.size // 8
    w = data[: words * 8].view(np.uint64)
    total = np.int64(0)
    for i in range(w.size):
        x = w[i] ^ _NEWLINES
        zero = ~(((x & _LOW7) + _LOW7) | x | _LOW7)  # 0x80 in each byte of x that is 0
        total += np.int64(((zero >> np.uint64(7)) * _BYTE_ONES) >> np.uint64(56))
    for j in range(words * 8, data.size):
        total += np.int64(data[j] == 10)
    return total


@warms
def _warm() -> None:
    _newlines(*readonly(np.frombuffer(b"a\nb\n\n0123456789", dtype=np.uint8)))
