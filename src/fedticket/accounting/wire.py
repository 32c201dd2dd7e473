"""The wire formats: what a client downloads and uploads, byte for byte.

The model's tensors travel in the mask's order (``state_dict`` order: every parameter and
every floating-point buffer, such as BatchNorm's running statistics;
:func:`~fedticket.pruning.mask.model_tensors`), with no header (both ends know the
architecture and the mask):

* dense payload: every value of every tensor;
* sparse payload: only the values the mask keeps.

The values are encoded one of four ways (``federate.values``):

* ``f32``: little-endian float32, 4 bytes a value (exact);
* ``f16``: little-endian IEEE half precision, 2 bytes a value;
* ``q8``, ``q4``: in blocks of :data:`VALUE_BLOCK` values (a block never spans two
  tensors), first every block's float32 minimum ``lo`` and step
  ``(max - lo) / (2 ** bits - 1)``, then one code a value, ``v = lo + code * step``
  (one byte, or two codes a byte at 4 bits, the first in the high nibble):
  ``8 * blocks + nnz`` or ``8 * blocks + ceil(nnz / 2)`` bytes. A model is rounded to
  the nearest code (the server keeps its exact model, so a download's rounding error
  never accumulates).

The mask goes to each client once, on its first round, as the cheapest of

* a bitmap: tag byte ``0x01`` + one bit per parameter (``numpy.packbits``,
  big-endian bit order), ``1 + ceil(numel / 8)`` bytes;
* an index list: tag byte ``0x02`` + the flat indices of the kept entries as
  little-endian uint32, ``1 + 4 * nnz`` bytes;
* an entropy code: tag byte ``0x03``, a varint header per tensor, then ANS words, within
  a few bits of ``n * H(d)`` per tensor (:mod:`fedticket.accounting.maskcode`).

A full mask is never sent: the dense payload needs none.

With ``federate.download = change`` a client that holds last time's download gets the
change from it instead of the model, in the same value code (:meth:`Codec.encode_values`,
rounded to the nearest): the same bytes, the error of the change's steps.

A client's upload is its new model as above (``federate.upload = "model"``), or its
*change* ``v`` from the model it received, over the values the download holds
(:class:`UpdateCode`):

* ``topk``: the ``k = round(upload_density * n)`` entries of largest magnitude, as
  their positions (the cheaper of a bitmap, tag ``0x01``, and an index list, tag
  ``0x02``, as for the mask) and then their values, float32:
  ``1 + min(ceil(n / 8), 4 k) + 4 k`` bytes;
* ``qsgd``: QSGD's stochastic quantization (Alistarh et al. 2017) with
  ``s = 2 ** (bits - 1) - 1`` levels (the sign is one of the bits), in buckets of
  :data:`QSGD_BUCKET` values scaled by their largest magnitude ``r`` (as in the
  paper's experiments; its analysis scales by the L2 norm, which leaves most values
  of a 512-bucket at level 0 or 1): per bucket ``r`` as float32, then per value a
  signed level ``l`` in ``[-s, s]`` (``v ~ r * l / s``; one int8 at 8 bits, two
  values a byte as ``l + s`` at 4 bits): ``4 * ceil(n / 512) + n`` or
  ``+ ceil(n / 2)`` bytes. The rounding is stochastic, so the decoded change equals
  ``v`` in expectation;
* ``change``: ``v`` whole in the ``values`` code above, rounded stochastically (the
  decoded change is ``v`` in expectation, so the average over clients carries no
  rounding bias: rounding a round's small change to the nearest code would drop every
  entry under half a step, the same way on every client), or to the nearest under error
  feedback (the residual carries the rounding error to the next round, and the nearest
  code errs by half a step at most, a stochastic one by up to a whole step). A
  client's change is sent rather than its model because a round's change is far
  smaller than the model's range: at 4 bits a model's step would erase it.

Traffic is ``len()`` of these byte strings; nothing is estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fedticket.accounting import maskcode
from fedticket.errors import FedticketError
from fedticket.pruning.mask import Mask
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import FederateSpec

BITMAP = 0x01
INDEX_LIST = 0x02


VALUE_BLOCK = 256
"""Values per scale of ``q8`` and ``q4`` (a block never spans two tensors)."""


def value_blocks(bounds: np.ndarray) -> np.ndarray:
    """The starts of the :data:`VALUE_BLOCK`-value blocks of a flat vector whose tensors
    span ``bounds[i]:bounds[i + 1]``, and its length last."""
    starts = [np.arange(a, b, VALUE_BLOCK) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return np.concatenate([*starts, [bounds[-1]]]).astype(np.int64)


@dataclass(frozen=True)
class FloatValues:
    """Little-endian IEEE floats of ``bits`` bits, one after another."""

    bits: int
    dtype: str

    @property
    def exact(self) -> bool:
        """A float32 weight comes back as it went."""
        return self.bits == 32

    def nbytes(self, blocks: np.ndarray) -> int:
        return self.bits // 8 * int(blocks[-1])

    def encode(self, flat: np.ndarray, blocks: np.ndarray,
               rng: np.random.Generator | None = None) -> bytes:
        return flat.astype(self.dtype).tobytes()

    def decode(self, payload: bytes, blocks: np.ndarray) -> np.ndarray:
        return np.frombuffer(payload, dtype=self.dtype).astype(np.float32)


@dataclass(frozen=True)
class QuantizedValues:
    """Per block the float32 minimum ``lo`` and step ``(max - lo) / (2 ** bits - 1)``,
    then a ``bits``-bit code a value (``v = lo + code * step``; two codes a byte at 4
    bits, the first in the high nibble)."""

    bits: int
    exact = False

    def nbytes(self, blocks: np.ndarray) -> int:
        n, nb = int(blocks[-1]), blocks.size - 1
        return 8 * nb + (n * self.bits + 7) // 8

    def encode(self, flat: np.ndarray, blocks: np.ndarray,
               rng: np.random.Generator | None = None) -> bytes:
        top = 2 ** self.bits - 1
        starts = blocks[:-1]
        if starts.size == 0:
            return b""
        lo = np.minimum.reduceat(flat, starts).astype(np.float32)
        step = ((np.maximum.reduceat(flat, starts) - lo) / np.float32(top)).astype(np.float32)
        per = np.diff(blocks)
        inv = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)
        x = (flat - np.repeat(lo, per)) * np.repeat(inv, per)
        if rng is None:
            q = np.rint(x)
        else:
            q = np.floor(x)
            q += rng.random(x.shape, dtype=np.float32) < x - q
        codes = np.clip(q, 0, top).astype(np.uint8)
        if self.bits == 4:
            if codes.size % 2:
                codes = np.append(codes, np.uint8(0))
            codes = (codes[0::2] << 4 | codes[1::2]).astype(np.uint8)
        scales = np.stack([lo, step], axis=1).astype("<f4")
        return scales.tobytes() + codes.tobytes()

    def decode(self, payload: bytes, blocks: np.ndarray) -> np.ndarray:
        n, nb = int(blocks[-1]), blocks.size - 1
        scales = np.frombuffer(payload, dtype="<f4", count=2 * nb).reshape(nb, 2)
        if not np.isfinite(scales).all() or bool((scales[:, 1] < 0).any()):
            raise FedticketError("payload has a block scale that is not finite and >= 0")
        body = np.frombuffer(payload, dtype=np.uint8, offset=8 * nb)
        if self.bits == 4:
            body = np.stack([body >> 4, body & 0x0F], axis=1).reshape(-1)[:n]
        per = np.diff(blocks)
        lo, step = np.repeat(scales[:, 0], per), np.repeat(scales[:, 1], per)
        return (lo + body.astype(np.float32) * step).astype(np.float32)


ValueCode = FloatValues | QuantizedValues

VALUE_CODES: Registry[ValueCode] = Registry("federate.values")
"""How weight values travel (``federate.values``)."""
VALUE_CODES.add("f32", FloatValues(32, "<f4"))
VALUE_CODES.add("f16", FloatValues(16, "<f2"))
VALUE_CODES.add("q8", QuantizedValues(8))
VALUE_CODES.add("q4", QuantizedValues(4))


def values_bytes(code: str, blocks: np.ndarray) -> int:
    """Length of a :func:`values_encode` payload."""
    return VALUE_CODES[code].nbytes(blocks)


def values_encode(flat: np.ndarray, code: str, blocks: np.ndarray,
                  rng: np.random.Generator | None = None) -> bytes:
    """``flat`` in ``code``, rounded to the nearest or, given ``rng``, stochastically
    (up with probability equal to the fraction, so the decoded value is ``v`` in
    expectation) where the code rounds."""
    return VALUE_CODES[code].encode(flat.astype(np.float32, copy=False), blocks, rng)


def values_decode(payload: bytes, code: str, blocks: np.ndarray) -> np.ndarray:
    """Inverse of :func:`values_encode`: float32 values."""
    expected = values_bytes(code, blocks)
    if len(payload) != expected:
        raise FedticketError(f"payload has {len(payload)} bytes, expected {expected} for this "
                             "mask")
    return VALUE_CODES[code].decode(payload, blocks)


QSGD_BUCKET = 512
"""Values per QSGD bucket (one scale each): the bucket size of QSGD's 4- and 8-bit
experiments."""


class Codec:
    """Encode and decode model payloads for one fixed mask and value encoding."""

    def __init__(self, mask: Mask, values: str = "f32", upload: str = "model",
                 density: float = 1.0, bits: int = 8, error_feedback: bool = False):
        VALUE_CODES.check(values)
        self.values = values
        self.mask = mask
        self.names = list(mask)
        self.shapes = {n: tuple(mask[n].shape) for n in self.names}
        self.sparse = not mask.is_full
        flat = torch.cat([mask[n].flatten() for n in self.names]).numpy()
        self._flat_mask = flat
        self._kept = np.flatnonzero(flat)
        self.numel = int(flat.size)
        self.nnz = int(self._kept.size)
        # where each tensor's values sit in the (kept) flat vector, for q8's per-tensor scale
        sizes = [int(mask[n].sum()) if self.sparse else mask[n].numel() for n in self.names]
        self._bounds = np.cumsum([0, *sizes])
        self._blocks = value_blocks(self._bounds)
        self._mask_message: bytes | None = None
        # per tensor: None (kept whole) or the flat positions it keeps
        self._where = {n: None if bool(mask[n].all()) else
                       np.flatnonzero(mask[n].reshape(-1).numpy()) for n in self.names}
        self.update = UpdateCode(upload, self.size, density, bits, error_feedback, values,
                                 self._blocks)
        """How uploads travel: the model payload, or a compressed change."""

    @classmethod
    def of(cls, mask: Mask, federate: FederateSpec) -> Codec:
        """The codec a run with these federate settings uses under ``mask``."""
        return cls(mask, federate.values, federate.upload, federate.upload_density,
                   federate.upload_bits, federate.error_feedback)

    @property
    def upload_bytes(self) -> int:
        """Length of every upload."""
        return self.payload_bytes if self.update.is_model else self.update.payload_bytes()

    @property
    def payload_bytes(self) -> int:
        """Length of every model payload under this mask and encoding."""
        return values_bytes(self.values, self._blocks)

    @property
    def size(self) -> int:
        """How many values a payload holds (the kept entries, or all of a dense model)."""
        return self.nnz if self.sparse else self.numel

    def kept(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The values of ``state`` a payload carries, as one float32 vector (a copy)."""
        parts = []
        for n in self.names:
            t = state[n].detach().reshape(-1).numpy().astype("<f4", copy=False)
            where = self._where[n]
            parts.append(t if where is None else t[where])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def from_kept(self, values: np.ndarray) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`kept`: full-size tensors, pruned entries exactly zero."""
        out: dict[str, torch.Tensor] = {}
        for n, a, b in zip(self.names, self._bounds[:-1], self._bounds[1:], strict=True):
            where = self._where[n]
            if where is None:
                t = values[a:b].astype(np.float32)  # a copy: the result owns its memory
            else:
                t = np.zeros(math.prod(self.shapes[n]), dtype=np.float32)
                t[where] = values[a:b]
            out[n] = torch.from_numpy(t).view(self.shapes[n])
        return out

    # ---------------------------------------------------------------- values
    def encode(self, state: Mapping[str, torch.Tensor]) -> bytes:
        """Payload of ``state`` (dense when the mask is full, else kept values only),
        rounded to the nearest where ``values`` rounds."""
        return values_encode(self.kept(state), self.values, self._blocks)

    def encode_values(self, values: np.ndarray) -> bytes:
        """A payload of the kept ``values`` themselves (a change, say), rounded to the
        nearest where ``values`` rounds: :meth:`encode` without the model."""
        return values_encode(values, self.values, self._blocks)

    def decode_values(self, payload: bytes) -> np.ndarray:
        """Inverse of :meth:`encode_values`: the kept values, float32."""
        return values_decode(payload, self.values, self._blocks)

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`encode` (exact for ``f32``); pruned entries come back as
        exact zeros."""
        values = values_decode(payload, self.values, self._blocks)
        if not np.isfinite(values).all():
            raise FedticketError("payload holds values that are not finite")
        return self.from_kept(values)

    def _unflatten(self, flat: np.ndarray) -> dict[str, torch.Tensor]:
        """Split a flat array into this model's tensors (copies: the result owns its memory)."""
        out: dict[str, torch.Tensor] = {}
        start = 0
        for n in self.names:
            size = int(np.prod(self.shapes[n], dtype=np.int64))
            out[n] = torch.from_numpy(flat[start : start + size].copy()).view(self.shapes[n])
            start += size
        return out

    # ------------------------------------------------------------------ mask
    def encode_mask(self) -> bytes:
        """The mask message (empty for a full mask): the cheapest of a bitmap, an index
        list and the entropy code (:mod:`fedticket.accounting.maskcode`), made once."""
        if not self.sparse:
            return b""
        if self._mask_message is not None:
            return self._mask_message
        self._mask_message = self._encode_mask()
        return self._mask_message

    def _encode_mask(self) -> bytes:
        bitmap_len = 1 + (self.numel + 7) // 8
        index_len = 1 + 4 * self.nnz
        entropy = maskcode.encode([self.mask[n].numpy() for n in self.names])
        if len(entropy) < min(bitmap_len, index_len):
            return entropy
        if index_len < bitmap_len:
            return bytes([INDEX_LIST]) + self._kept.astype("<u4").tobytes()
        return bytes([BITMAP]) + np.packbits(self._flat_mask).tobytes()

    def decode_mask(self, payload: bytes) -> Mask:
        """Rebuild a mask with this codec's names and shapes from :meth:`encode_mask` bytes."""
        if not payload:
            raise FedticketError("empty mask message")
        tag, body = payload[0], payload[1:]
        if tag == maskcode.ENTROPY:
            parts = maskcode.decode(payload, [self.shapes[n] for n in self.names])
            return Mask({n: torch.from_numpy(m) for n, m in zip(self.names, parts, strict=True)})
        if tag == BITMAP:
            if len(body) != (self.numel + 7) // 8:
                raise FedticketError(f"bitmap mask has {len(body)} bytes for {self.numel} entries")
            flat = np.unpackbits(np.frombuffer(body, dtype=np.uint8), count=self.numel)
        elif tag == INDEX_LIST:
            if len(body) % 4:
                raise FedticketError("index-list mask length is not a multiple of 4")
            idx = np.frombuffer(body, dtype="<u4")
            if idx.size and int(idx.max()) >= self.numel:
                raise FedticketError("index-list mask has an index past the model size")
            flat = np.zeros(self.numel, dtype=np.uint8)
            flat[idx] = 1
        else:
            raise FedticketError(f"unknown mask encoding tag {tag}")
        return Mask(self._unflatten(flat.astype(bool)))


# ------------------------------------------------------------------- update codes
def _positions(idx: np.ndarray, n: int) -> bytes:
    """The cheaper of a bitmap and an index list of the sorted positions ``idx`` < ``n``."""
    if 4 * idx.size < (n + 7) // 8:
        return bytes([INDEX_LIST]) + idx.astype("<u4").tobytes()
    bits = np.zeros(n, dtype=np.uint8)
    bits[idx] = 1
    return bytes([BITMAP]) + np.packbits(bits).tobytes()


def positions_bytes(k: int, n: int) -> int:
    """Length of :func:`_positions` for ``k`` of ``n`` positions."""
    return 1 + min((n + 7) // 8, 4 * k)


def topk_encode(v: np.ndarray, k: int) -> tuple[bytes, np.ndarray]:
    """The ``k`` entries of ``v`` of largest magnitude (positions, then float32 values)
    and the sorted positions sent."""
    n = v.size
    if k >= n:
        idx = np.arange(n)
    elif k <= 0:
        idx = np.zeros(0, dtype=np.int64)
    else:
        idx = np.sort(np.argpartition(-np.abs(v), k - 1)[:k])
    return _positions(idx, n) + v[idx].astype("<f4").tobytes(), idx


def topk_decode(payload: bytes, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`topk_encode`: a length-``n`` vector, zero where nothing was sent."""
    expected = positions_bytes(k, n) + 4 * k
    if len(payload) != expected:
        raise FedticketError(f"top-k update has {len(payload)} bytes, expected {expected}")
    tag, cut = payload[0], positions_bytes(k, n)
    if tag == INDEX_LIST and cut == 1 + 4 * k:
        idx = np.frombuffer(payload, dtype="<u4", count=k, offset=1).astype(np.int64)
        if k and (int(idx.max()) >= n or bool((np.diff(idx) <= 0).any())):
            raise FedticketError("top-k update has positions out of order or past the model")
    elif tag == BITMAP and cut == 1 + (n + 7) // 8:
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, count=cut - 1, offset=1),
                             count=n)
        idx = np.flatnonzero(bits)
        if idx.size != k:
            raise FedticketError(f"top-k update marks {idx.size} positions, expected {k}")
    else:
        raise FedticketError(f"top-k update has an unknown position tag {tag}")
    out = np.zeros(n, dtype=np.float32)
    out[idx] = np.frombuffer(payload, dtype="<f4", count=k, offset=cut)
    return out


def qsgd_levels(bits: int) -> int:
    """QSGD's ``s``: the magnitude levels a ``bits``-bit signed code holds."""
    return 2 ** (bits - 1) - 1


def qsgd_bytes(n: int, bits: int) -> int:
    """Length of a :func:`qsgd_encode` payload of ``n`` values."""
    return 4 * math.ceil(n / QSGD_BUCKET) + (n if bits == 8 else (n + 1) // 2)


def qsgd_encode(v: np.ndarray, bits: int, rng: np.random.Generator) -> bytes:
    """QSGD of ``v``: per bucket the float32 scale ``r = max |v|``, per value the level
    ``sign(v) * l``, ``l = floor(|v| s / r)`` rounded up with probability
    ``|v| s / r - floor(|v| s / r)`` (so the decoded value is ``v`` in expectation)."""
    s = qsgd_levels(bits)
    n = v.size
    pad = (-n) % QSGD_BUCKET
    buckets = np.pad(v.astype(np.float32), (0, pad)).reshape(-1, QSGD_BUCKET)
    norms = np.abs(buckets).max(axis=1).astype("<f4")
    inv = np.divide(s, norms, out=np.zeros_like(norms), where=norms > 0)[:, None]
    scaled = np.abs(buckets) * inv
    level = np.floor(scaled)
    level += rng.random(scaled.shape, dtype=np.float32) < scaled - level
    np.minimum(level, s, out=level)
    codes = (np.copysign(level, buckets)).astype(np.int8).reshape(-1)[:n]
    if bits == 8:
        body = codes.tobytes()
    else:
        nib = (codes + s).astype(np.uint8)
        if n % 2:
            nib = np.append(nib, np.uint8(s))
        body = (nib[0::2] << 4 | nib[1::2]).astype(np.uint8).tobytes()
    return norms.tobytes() + body


def qsgd_decode(payload: bytes, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`qsgd_encode` (the decoded levels times ``r / s``)."""
    if len(payload) != qsgd_bytes(n, bits):
        raise FedticketError(f"QSGD update has {len(payload)} bytes, expected "
                             f"{qsgd_bytes(n, bits)}")
    s = qsgd_levels(bits)
    nb = math.ceil(n / QSGD_BUCKET)
    norms = np.frombuffer(payload, dtype="<f4", count=nb)
    if not np.isfinite(norms).all() or bool((norms < 0).any()):
        raise FedticketError("QSGD update has a scale that is not finite and >= 0")
    body = np.frombuffer(payload, dtype=np.uint8, offset=4 * nb)
    if bits == 8:
        codes = body.view(np.int8).astype(np.float32)
    else:
        codes = (np.stack([body >> 4, body & 0x0F], axis=1).reshape(-1)[:n]
                 .astype(np.float32) - s)
    if bool((np.abs(codes) > s).any()):
        raise FedticketError(f"QSGD update has a level outside [-{s}, {s}]")
    scale = np.repeat(norms / s, QSGD_BUCKET)[:n]
    return (codes * scale).astype(np.float32)


class UploadPart(Protocol):
    """One way a client's upload travels (``federate.upload``), given the code's
    settings."""

    is_model: bool
    """The upload is the client's model in the :class:`Codec`'s payload, not a change."""
    in_values: bool
    """The change travels in the value code (``federate.values``)."""

    def nbytes(self, code: UpdateCode) -> int: ...

    def encode(self, code: UpdateCode, v: np.ndarray, rng: np.random.Generator) -> bytes: ...

    def decode(self, code: UpdateCode, payload: bytes) -> np.ndarray: ...


class ModelUpload:
    """The client's new model (the :class:`Codec` encodes it; no change travels)."""

    is_model, in_values = True, False

    def nbytes(self, code: UpdateCode) -> int:
        raise FedticketError("a model upload's length is the codec's payload length")

    def encode(self, code: UpdateCode, v: np.ndarray, rng: np.random.Generator) -> bytes:
        raise FedticketError("a model upload is encoded by the codec, not as a change")

    def decode(self, code: UpdateCode, payload: bytes) -> np.ndarray:
        raise FedticketError("a model upload is decoded by the codec, not as a change")


class TopKUpload:
    """The ``k`` entries of largest magnitude (:func:`topk_encode`)."""

    is_model, in_values = False, False

    def nbytes(self, code: UpdateCode) -> int:
        return positions_bytes(code.k, code.n) + 4 * code.k

    def encode(self, code: UpdateCode, v: np.ndarray, rng: np.random.Generator) -> bytes:
        return topk_encode(v, code.k)[0]

    def decode(self, code: UpdateCode, payload: bytes) -> np.ndarray:
        return topk_decode(payload, code.n, code.k)


class QSGDUpload:
    """QSGD's stochastic levels (:func:`qsgd_encode`)."""

    is_model, in_values = False, False

    def nbytes(self, code: UpdateCode) -> int:
        return qsgd_bytes(code.n, code.bits)

    def encode(self, code: UpdateCode, v: np.ndarray, rng: np.random.Generator) -> bytes:
        return qsgd_encode(v, code.bits, rng)

    def decode(self, code: UpdateCode, payload: bytes) -> np.ndarray:
        return qsgd_decode(payload, code.n, code.bits)


class ChangeUpload:
    """The whole change in the value code: to the nearest under error feedback (the
    residual carries the rounding error), else stochastically (the average over clients
    is unbiased)."""

    is_model, in_values = False, True

    def nbytes(self, code: UpdateCode) -> int:
        return values_bytes(code.values, code.value_blocks)

    def encode(self, code: UpdateCode, v: np.ndarray, rng: np.random.Generator) -> bytes:
        return values_encode(v, code.values, code.value_blocks,
                             None if code.error_feedback else rng)

    def decode(self, code: UpdateCode, payload: bytes) -> np.ndarray:
        return values_decode(payload, code.values, code.value_blocks)


UPLOAD_CODES: Registry[UploadPart] = Registry("federate.upload")
"""What a client uploads (``federate.upload``)."""
UPLOAD_CODES.add("model", ModelUpload())
UPLOAD_CODES.add("topk", TopKUpload())
UPLOAD_CODES.add("qsgd", QSGDUpload())
UPLOAD_CODES.add("change", ChangeUpload())


@dataclass(frozen=True)
class DownloadPart:
    """What a client downloads (``federate.download``)."""

    change: bool
    """To a client that holds last time's download: the change from it (else always the
    model)."""
    topk: bool = False
    """The change travels as its ``k`` entries of largest magnitude (the upload's ``k``,
    :func:`topk_encode`), not whole in the value code. What is not sent stays in the
    next change to that client: the server's error feedback (Sattler et al. 2019, STC)."""

    def encode(self, codec: Codec, change: np.ndarray) -> bytes:
        """The payload of ``change`` (the kept values' change)."""
        if self.topk:
            return topk_encode(change, codec.update.k)[0]
        return codec.encode_values(change)

    def decode(self, codec: Codec, payload: bytes) -> np.ndarray:
        """Inverse of :meth:`encode`."""
        if self.topk:
            return topk_decode(payload, codec.size, codec.update.k)
        return codec.decode_values(payload)


DOWNLOAD_CODES: Registry[DownloadPart] = Registry("federate.download")
DOWNLOAD_CODES.add("model", DownloadPart(change=False))
DOWNLOAD_CODES.add("change", DownloadPart(change=True))
DOWNLOAD_CODES.add("topk", DownloadPart(change=True, topk=True))


@dataclass(frozen=True)
class UpdateCode:
    """How a client's upload travels (``federate.upload``): its new model (``model``,
    the :class:`Codec`'s payload), or its change from the model it received, sparsified
    (``topk``), quantized (``qsgd``) or whole in the value code (``change``), over the
    ``n`` values a download holds. The kinds are the parts registered in
    :data:`UPLOAD_CODES`.

    With ``error_feedback`` the client adds what it did not send last time (its
    residual) to this round's change before compressing, and keeps what it does not
    send now (Seide et al. 2014; Lin et al. 2018; Stich et al. 2018).
    """

    kind: str = "model"
    n: int = 0
    density: float = 1.0
    bits: int = 8
    error_feedback: bool = False
    values: str = "f32"
    """``change``: the value code (:func:`values_encode`)."""
    blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    """``change``: the blocks of the ``n`` values (:func:`value_blocks`); one tensor of
    ``n`` values when None."""

    def __post_init__(self) -> None:
        UPLOAD_CODES.check(self.kind)
        if self.bits not in (4, 8):
            raise FedticketError(f"QSGD uploads take 4 or 8 bits, got {self.bits}")

    @property
    def part(self) -> UploadPart:
        return UPLOAD_CODES[self.kind]

    @property
    def k(self) -> int:
        """``topk``: how many values an upload holds."""
        return min(self.n, max(1, round(self.density * self.n)))

    @property
    def is_model(self) -> bool:
        return self.part.is_model

    @property
    def value_blocks(self) -> np.ndarray:
        if self.blocks is not None:
            return self.blocks
        return value_blocks(np.array([0, self.n]))

    def payload_bytes(self) -> int:
        return self.part.nbytes(self)

    def encode(self, change: np.ndarray, residual: np.ndarray | None,
               rng: np.random.Generator) -> tuple[bytes, np.ndarray | None]:
        """The upload of ``change`` (plus ``residual`` under error feedback) and the new
        residual (None without error feedback)."""
        v = change if residual is None or not self.error_feedback else change + residual
        payload = self.part.encode(self, v, rng)
        if not self.error_feedback:
            return payload, None
        return payload, (v - self.part.decode(self, payload)).astype(np.float32)

    def decode(self, payload: bytes) -> np.ndarray:
        """The change an upload carries."""
        return self.part.decode(self, payload)
