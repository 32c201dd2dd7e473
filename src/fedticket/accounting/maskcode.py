"""A mask near its entropy: per-tensor ANS coding of the keep/prune bits.

A mask of density ``d`` over ``n`` weights holds at most ``n * H(d)`` bits of
information, ``H(d) = -d log2 d - (1 - d) log2 (1 - d)``: 0.29 bits a weight at
``d = 0.05``, where a bitmap spends 1. This code gets within a few bits of the bound
of each tensor (and so below ``n * H(d)`` of the whole mask, as ``H`` is concave),
with an asymmetric numeral system (Duda 2013) from the ``constriction`` library
(Bamler 2022).

The message, after the tag byte ``0x03``:

* a header, per tensor in the mask's order, as unsigned LEB128 varints: ``2 k`` (the
  tensor's kept count ``k``; its bits are coded one per weight) or ``2 k_r + 1``,
  ``k_c``, ``k`` (a *factored* tensor, when that is cheaper: first the bits of its
  ``d0`` rows and ``d1`` columns, over its first two dimensions, that keep anything
  (``k_r`` and ``k_c`` of them), then the ``k`` kept entries among those rows and
  columns only, as whole channels removed leave a mask);
* the ANS words (little-endian uint32) of all coded bits, tensor by tensor, each bit
  sequence eight bits to a symbol (zero-padded), with the fixed model of eight
  independent bits of ``P(1) = k / len`` its header gives. A sequence that is all
  zeros or all ones costs nothing.

The decoder knows every tensor's shape (both ends know the architecture), checks
that each decoded sequence holds the count its header states and that no word is
left over, and refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedticket.errors import FedticketError

ENTROPY = 0x03


def entropy_bits(mask_bits: np.ndarray) -> float:
    """``n * H(d)`` of a flat 0/1 array: the bound on any code of a mask of its density."""
    n = int(mask_bits.size)
    k = int(np.count_nonzero(mask_bits))
    return n * binary_entropy(k / n) if n else 0.0


def binary_entropy(d: float) -> float:
    """``H(d)`` in bits."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return -d * math.log2(d) - (1 - d) * math.log2(1 - d)


def _varint(x: int) -> bytes:
    out = bytearray()
    while True:
        byte, x = x & 0x7F, x >> 7
        out.append(byte | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise FedticketError("entropy-coded mask has a truncated header")
        byte = buf[pos]
        x |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return x, pos


def _support(m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows and columns (first two dimensions) that keep anything: every kept entry
    lies in their product, the support. None for fewer than two dimensions or no
    entries."""
    if m.ndim < 2 or m.size == 0:
        return None
    flat = m.reshape(m.shape[0], m.shape[1], -1)
    return np.asarray(flat.any(axis=(1, 2))), np.asarray(flat.any(axis=(0, 2)))


def _inside(m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The entries of ``m`` in the support of ``rows`` and ``cols``, in C order."""
    flat = m.reshape(m.shape[0], m.shape[1], -1)
    return flat[np.ix_(np.flatnonzero(rows), np.flatnonzero(cols))].reshape(-1)


def _cost(k: int, n: int) -> float:
    return n * binary_entropy(k / n) if n else 0.0


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)


def _model(k: int, n: int):  # noqa: ANN202 - a constriction model
    """The model of one byte of a sequence of ``n`` bits with ``k`` ones: eight
    independent bits, each 1 with probability ``k / n`` (coding bytes rather than bits
    takes an eighth of the coder's steps for the same entropy)."""
    import constriction

    d = k / n
    p = d ** _POPCOUNT * (1 - d) ** (8 - _POPCOUNT)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def _symbols(seq: np.ndarray) -> np.ndarray:
    """The bits of ``seq`` eight to a symbol (the first in the lowest bit), zero-padded."""
    return np.packbits(seq, bitorder="little").astype(np.int32)


def encode(tensors: Sequence[np.ndarray]) -> bytes:
    """The entropy-coded message of a mask given as boolean arrays, in order."""
    import constriction

    header = bytearray([ENTROPY])
    sequences: list[np.ndarray] = []
    for m in tensors:
        m = np.asarray(m, dtype=bool)
        k = int(np.count_nonzero(m))
        sup = _support(m)
        if sup is not None:
            rows, cols = sup
            kr, kc = int(np.count_nonzero(rows)), int(np.count_nonzero(cols))
            ks = kr * kc * (m.size // (m.shape[0] * m.shape[1]))
            factored = (_cost(kr, rows.size) + _cost(kc, cols.size) + _cost(k, ks) + 16
                        < _cost(k, m.size))
        if sup is not None and factored:
            header += _varint(2 * kr + 1) + _varint(kc) + _varint(k)
            sequences += [rows, cols, _inside(m, rows, cols)]
        else:
            header += _varint(2 * k)
            sequences.append(m.reshape(-1))
    coder = constriction.stream.stack.AnsCoder()
    for seq in reversed(sequences):  # a stack: the last sequence goes in first
        n, k = seq.size, int(np.count_nonzero(seq))
        if 0 < k < n:
            coder.encode_reverse(_symbols(seq), _model(k, n))
    return bytes(header) + coder.get_compressed().astype("<u4").tobytes()


def _bits(coder, k: int, n: int) -> np.ndarray:  # noqa: ANN001 - a constriction coder
    """``n`` bits holding ``k`` ones, decoded from ``coder`` (nothing when all equal)."""
    if k in (0, n):
        return np.full(n, k == n, dtype=bool)
    try:
        sym = np.asarray(coder.decode(_model(k, n), (n + 7) // 8), dtype=np.int32)
    except Exception as e:
        raise FedticketError(f"entropy-coded mask body is not valid: {e}") from None
    bits = np.unpackbits(sym.astype(np.uint8), bitorder="little")
    seq = bits[:n].astype(bool)
    if int(np.count_nonzero(seq)) != k or bits[n:].any():
        raise FedticketError("entropy-coded mask decodes to another count than its header "
                             "states")
    return seq


def decode(message: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Inverse of :func:`encode` for tensors of ``shapes``: boolean arrays."""
    import constriction

    if not message or message[0] != ENTROPY:
        raise FedticketError("not an entropy-coded mask")
    pos = 1
    plan: list[tuple[tuple[int, ...], list[int]]] = []
    for shape in shapes:
        size = math.prod(shape)
        h, pos = _read_varint(message, pos)
        if h & 1:
            if len(shape) < 2:
                raise FedticketError("entropy-coded mask factors a tensor of one dimension")
            kc, pos = _read_varint(message, pos)
            k, pos = _read_varint(message, pos)
            counts = [h >> 1, kc, k]
            if counts[0] > shape[0] or kc > shape[1] or k > size:
                raise FedticketError("entropy-coded mask keeps more entries than a tensor has")
        else:
            counts = [h >> 1]
            if counts[0] > size:
                raise FedticketError("entropy-coded mask keeps more entries than a tensor has")
        plan.append((tuple(shape), counts))
    body = message[pos:]
    if len(body) % 4:
        raise FedticketError("entropy-coded mask body is not a whole number of words")
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
    except Exception as e:  # constriction refuses some word sequences outright
        raise FedticketError(f"entropy-coded mask body is not valid: {e}") from None
    out = []
    for shape, counts in plan:
        if len(counts) == 1:
            out.append(_bits(coder, counts[0], math.prod(shape)).reshape(shape))
            continue
        rows = np.flatnonzero(_bits(coder, counts[0], shape[0]))
        cols = np.flatnonzero(_bits(coder, counts[1], shape[1]))
        inner = math.prod(shape[2:])
        if counts[2] > rows.size * cols.size * inner:
            raise FedticketError("entropy-coded mask keeps more entries than its rows and "
                                 "columns hold")
        m = np.zeros((shape[0], shape[1], inner), dtype=bool)
        m[np.ix_(rows, cols)] = _bits(coder, counts[2], rows.size * cols.size * inner
                                      ).reshape(rows.size, cols.size, inner)
        out.append(m.reshape(shape))
    if not coder.is_empty():
        raise FedticketError("entropy-coded mask has words left over")
    return out
