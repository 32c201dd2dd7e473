"""The wire formats: what a client downloads and uploads, byte for byte.

The model's tensors travel in the mask's order (``state_dict`` order: every parameter and
every floating-point buffer, such as BatchNorm's running statistics;
:func:`~fedticket.pruning.mask.model_tensors`), with no header (both ends know the
architecture and the mask):

* dense payload: every value of every tensor;
* sparse payload: only the values the mask keeps.

The values are encoded one of three ways (``federate.values``):

* ``f32``: little-endian float32, 4 bytes a value (exact);
* ``f16``: little-endian IEEE half precision, 2 bytes a value;
* ``q8``: per tensor, a float32 minimum and a float32 step, then one uint8 code a
  value, ``v = min + code * step`` with ``step = (max - min) / 255`` and codes rounded
  to the nearest: ``8 * tensors + nnz`` bytes.

The mask goes to each client once, on its first round, as the cheaper of

* a bitmap: tag byte ``0x01`` + one bit per parameter (``numpy.packbits``,
  big-endian bit order), ``1 + ceil(numel / 8)`` bytes;
* an index list: tag byte ``0x02`` + the flat indices of the kept entries as
  little-endian uint32, ``1 + 4 * nnz`` bytes.

A full mask is never sent: the dense payload needs none.
Traffic is ``len()`` of these byte strings; nothing is estimated.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedticket.errors import FedticketError
from fedticket.pruning.mask import Mask

BITMAP = 0x01
INDEX_LIST = 0x02


VALUE_BYTES = {"f32": 4, "f16": 2, "q8": 1}


class Codec:
    """Encode and decode model payloads for one fixed mask and value encoding."""

    def __init__(self, mask: Mask, values: str = "f32"):
        if values not in VALUE_BYTES:
            raise FedticketError(f"unknown value encoding {values!r}; choose one of: "
                                 f"{', '.join(VALUE_BYTES)}")
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

    @property
    def payload_bytes(self) -> int:
        """Length of every model payload under this mask and encoding."""
        n = self.nnz if self.sparse else self.numel
        if self.values == "q8":
            return 8 * len(self.names) + n
        return VALUE_BYTES[self.values] * n

    # ---------------------------------------------------------------- values
    def encode(self, state: Mapping[str, torch.Tensor]) -> bytes:
        """Payload of ``state`` (dense when the mask is full, else kept values only)."""
        flat = np.concatenate(
            [state[n].detach().reshape(-1).numpy().astype("<f4", copy=False) for n in self.names]
        )
        if self.sparse:
            flat = flat[self._kept]
        if self.values == "f32":
            return flat.tobytes()
        if self.values == "f16":
            return flat.astype("<f2").tobytes()
        parts = []
        for a, b in zip(self._bounds[:-1], self._bounds[1:], strict=True):
            seg = flat[a:b]
            lo = float(seg.min()) if seg.size else 0.0
            hi = float(seg.max()) if seg.size else 0.0
            step = (hi - lo) / 255.0
            codes = np.zeros(seg.size, np.uint8) if step == 0 else \
                np.clip(np.rint((seg - lo) / step), 0, 255).astype(np.uint8)
            parts.append(np.array([lo, step], dtype="<f4").tobytes() + codes.tobytes())
        return b"".join(parts)

    def _values(self, payload: bytes) -> np.ndarray:
        if self.values == "f32":
            return np.frombuffer(payload, dtype="<f4")
        if self.values == "f16":
            return np.frombuffer(payload, dtype="<f2").astype(np.float32)
        out, pos = [], 0
        for a, b in zip(self._bounds[:-1], self._bounds[1:], strict=True):
            lo, step = np.frombuffer(payload, dtype="<f4", count=2, offset=pos)
            codes = np.frombuffer(payload, dtype=np.uint8, count=int(b - a), offset=pos + 8)
            out.append((lo + codes.astype(np.float32) * step).astype(np.float32))
            pos += 8 + int(b - a)
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def decode(self, payload: bytes) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`encode` (exact for ``f32``); pruned entries come back as
        exact zeros."""
        expected = self.payload_bytes
        if len(payload) != expected:
            raise FedticketError(
                f"payload has {len(payload)} bytes, expected {expected} for this mask"
            )
        values = self._values(payload)
        if not np.isfinite(values).all():
            raise FedticketError("payload holds values that are not finite")
        if self.sparse:
            flat = np.zeros(self.numel, dtype=np.float32)
            flat[self._kept] = values
        else:
            flat = values.astype(np.float32)
        return self._unflatten(flat)

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
        """The mask message (empty for a full mask): the cheaper of bitmap and index list."""
        if not self.sparse:
            return b""
        bitmap_len = 1 + (self.numel + 7) // 8
        index_len = 1 + 4 * self.nnz
        if index_len < bitmap_len:
            return bytes([INDEX_LIST]) + self._kept.astype("<u4").tobytes()
        return bytes([BITMAP]) + np.packbits(self._flat_mask).tobytes()

    def decode_mask(self, payload: bytes) -> Mask:
        """Rebuild a mask with this codec's names and shapes from :meth:`encode_mask` bytes."""
        if not payload:
            raise FedticketError("empty mask message")
        tag, body = payload[0], payload[1:]
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
