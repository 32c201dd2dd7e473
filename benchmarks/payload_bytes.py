"""Every payload's bytes over its limit (target p3).

For the masks of `configs/quick.toml` (`fedavg`, `dae-ticket`, `dae-ticket-fast`; the
FedAvg CNN at 80% of the prunable weights removed) and each value encoding, three
kinds of payload are measured:

* the model payload (every download and upload) over ``bytes_per_value * nnz``;
* a client's first download, model + mask message, over the values plus the cheaper
  of the two mask codes (a bitmap or an index list);
* the Flower message that carries a first download (fedticket's ClientApp record:
  payload, mask and four integers) over the codec bytes it carries: Flower's own
  framing.

The mask message is also set against the entropy bound ``log2 C(n, nnz)`` bits, for
information: a mask code that approached it would need an entropy coder.

    .venv/bin/python benchmarks/payload_bytes.py
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from fedticket.accounting.wire import VALUE_BYTES, Codec
from fedticket.data import load_splits
from fedticket.spec import load_config
from fedticket.stages import pretrain_and_prune, starting_weights

ROOT = Path(__file__).resolve().parents[1]


def flower_bytes(payload: bytes, mask: bytes) -> int | None:
    try:
        from flwr.app import ConfigRecord, RecordDict
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    except ImportError:
        return None
    rec = RecordDict({"fedticket": ConfigRecord({
        "round": 1, "client": 0, "payload": payload, "mask": mask, "seed": 2**31})})
    return sum(len(o.deflate()) for o in get_all_nested_objects(rec).values())


def main() -> None:
    config = load_config(ROOT / "configs" / "quick.toml")
    worst = 0.0
    print(f"{'method':16} {'values':6} {'payload B':>10} {'limit B':>10} {'ratio':>6} "
          f"{'1st down B':>10} {'ratio':>6} {'flower B':>10} {'ratio':>6} {'mask/entropy':>12}")
    for method in ("fedavg", "dae-ticket", "dae-ticket-fast"):
        [spec] = replace(config, methods=(method,)).specs()
        splits = load_splits(spec.data, spec.seed)
        stages = pretrain_and_prune(spec, splits, ROOT / "runs" / "quick")
        state = starting_weights(spec, splits, stages)
        for values in VALUE_BYTES:
            codec = Codec(stages.mask, values)
            payload, mask = codec.encode(state), codec.encode_mask()
            n = codec.nnz if codec.sparse else codec.numel
            limit = VALUE_BYTES[values] * n
            mask_limit = min(1 + (codec.numel + 7) // 8, 1 + 4 * codec.nnz) if mask else 0
            first, first_limit = len(payload) + len(mask), limit + mask_limit
            fl = flower_bytes(payload, mask)
            k = codec.nnz
            entropy = (math.lgamma(codec.numel + 1) - math.lgamma(k + 1)
                       - math.lgamma(codec.numel - k + 1)) / math.log(2) / 8
            ratios = [len(payload) / limit, first / first_limit]
            if fl is not None:
                ratios.append(fl / first)
            worst = max(worst, *ratios)
            print(f"{method:16} {values:6} {len(payload):>10,} {limit:>10,} {ratios[0]:6.4f} "
                  f"{first:>10,} {ratios[1]:6.4f} {fl or 0:>10,} "
                  f"{(fl or 0) / first:6.4f} "
                  f"{(len(mask) / entropy if mask else float('nan')):12.3f}")
    print(f"p3_payload_bytes_over_limit: {worst:.4f}")


if __name__ == "__main__":
    main()
