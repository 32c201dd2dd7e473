"""Every payload's bytes over its limit (target p3), the mask over its entropy, and what
coding costs a client beside its update.

The masks are the real pipeline's (`configs/quick.toml`: the FedAvg CNN on
Fashion-MNIST, DAE pretrained on the server's pool): `fedavg` (no mask), `dae-ticket`
and `dae-ticket-fast` at 80% and 95% of the prunable weights removed; and, as the
hardest case for a mask code, masks drawn at random (no structure at all) at 80, 90 and
95%. For each value encoding:

* the model payload (every download) over its limit: ``bits * nnz / 8``, plus for q8
  and q4 the 8-byte minimum and step of every block, counted;
* a client's first download, model + mask message, over the values plus the cheaper
  of a bitmap and an index list (the codes before the entropy code: the message is
  the cheapest of the three);
* the Flower message that carries a first download (fedticket's ClientApp record:
  payload, mask and four integers) over the codec bytes it carries: Flower's own
  framing;
* the mask message, header included, over ``n * H(d)`` bits (target <= 1.03).

Then, on one torch thread, the CPU time of what a client codes in a round (decode the
download, encode the upload: its quantized change with error feedback for q8 and q4,
its model for f32 and f16) over the CPU time of its own update (E=1 over 400 images at
B=10; target < 5%); and with the mask's decode added, which a client that keeps state
does once and a stateless client every round. The random masks' rows give the server's
encode of a mask (once per run) and a client's decode.

    .venv/bin/python benchmarks/payload_bytes.py [--doc docs/BITS.md]

It writes every row and the targets' values to benchmarks/results/payload_bytes.json,
with the commit, the versions and the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _timing import cpu_model, median_cpu_s

from fedticket.accounting import maskcode
from fedticket.accounting.wire import VALUE_CODES, Codec
from fedticket.data import Labeled, load_splits
from fedticket.federated import LocalTrainer
from fedticket.io import git_commit, versions
from fedticket.pruning import Mask
from fedticket.spec import load_config, parse_set
from fedticket.stages import fresh_model, pretrain_and_prune, starting_weights

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench"


def flower_bytes(payload: bytes, mask: bytes) -> int | None:
    try:
        from flwr.app import ConfigRecord, RecordDict
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    except ImportError:
        return None
    rec = RecordDict({"fedticket": ConfigRecord({
        "round": 1, "client": 0, "payload": payload, "mask": mask, "seed": 2**31})})
    return sum(len(o.deflate()) for o in get_all_nested_objects(rec).values())


def value_limit(codec: Codec, values: str) -> int:
    n = codec.size
    blocks = codec._blocks.size - 1
    scales = 8 * blocks if values in ("q8", "q4") else 0
    return -(-VALUE_CODES[values].bits * n // 8) + scales


def render(results: dict) -> str:
    """The markdown of a results file: the targets, then per mask and value code the
    payload, the first download and the mask against their limits, and the clients'
    coding time against their update (deterministic: a test re-renders the committed
    file and compares it with docs/BITS.md)."""
    t = results["targets"]
    lines = [f"`.venv/bin/python benchmarks/payload_bytes.py --doc docs/BITS.md` on "
             f"{results['cpu']}, at commit `{results['git'].get('commit', '?')[:10]}`"
             f"{' (with local changes)' if results['git'].get('dirty') else ''}:", "",
             f"- `p3_mask_bits_over_entropy: {t['p3_mask_bits_over_entropy']:.4f}` (target "
             "<= 1.03): the worst mask message, header included, over `n·H(d)` bits;",
             f"- `p3_payload_bytes_over_limit: {t['p3_payload_bytes_over_limit']:.4f}`: the "
             "worst payload over its limit (the values' bits and the blocks' scales; a first "
             "download over the values plus the cheaper of bitmap and index list; a Flower "
             "message over the codec bytes it carries);",
             f"- `p3_client_coding_cpu_over_update: "
             f"{t['p3_client_coding_cpu_over_update']:.4f}` (target < 0.05): a client's "
             "decode of its download and encode of its upload over its own update (E=1, 400 "
             "images, B=10), one thread;",
             f"- `p3_stateless_client_coding_cpu_over_update: "
             f"{t['p3_stateless_client_coding_cpu_over_update']:.4f}`: the same with the "
             "mask's decode added, as a stateless client pays it every round (a stateful "
             "client once).", "",
             "| mask | values | payload B | first download B | mask B | mask / n·H(d) | "
             "coding ms | mask decode ms | update ms |",
             "| :-- | :-- | --: | --: | --: | --: | --: | --: | --: |"]
    for r in results["rows"]:
        if "values" not in r:
            lines.append(f"| {r['mask']} (encode {r['mask_encode_ms']:.1f} ms) | - | - | - | "
                         f"{r['mask_bytes']:,} | {r['mask_over_entropy']:.4f} | - | "
                         f"{r['mask_decode_ms']:.1f} | - |")
            continue
        ratio = f"{r['mask_over_entropy']:.4f}" if r["mask_bytes"] else "-"
        lines.append(f"| {r['mask']} | {r['values']} | {r['payload_bytes']:,} | "
                     f"{r['first_download_bytes']:,} | {r['mask_bytes']:,} | {ratio} | "
                     f"{r['coding_ms']:.1f} | {r['mask_decode_ms']:.1f} | "
                     f"{r['update_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, text: str) -> None:
    begin, end = "<!-- BEGIN payload_bytes -->\n", "<!-- END payload_bytes -->"
    old = doc.read_text()
    if begin not in old or end not in old:
        raise SystemExit(f"{doc} has no {begin.strip()} ... {end} block")
    doc.write_text(old[: old.index(begin)] + begin + text + old[old.index(end):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", type=Path, help="also put the results table into this markdown "
                                               "file, between its payload_bytes markers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = load_config(ROOT / "configs" / "quick.toml")
    cases = [("fedavg", 0.8), ("dae-ticket", 0.8), ("dae-ticket", 0.95),
             ("dae-ticket-fast", 0.8), ("dae-ticket-fast", 0.95)]
    worst, worst_mask, worst_time, worst_stateless = 0.0, 0.0, 0.0, 0.0
    table: list[dict] = []
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread")
    print(f"{'mask':22} {'values':6} {'payload B':>10} {'ratio':>6} {'1st down B':>10} "
          f"{'ratio':>6} {'flower':>6} {'mask B':>8} {'mask/nH':>7} {'code ms':>7} "
          f"{'mask ms':>7} {'update ms':>9} {'code/up':>7} {'+mask/up':>8}")
    data = None
    for method, sparsity in cases:
        [spec] = replace(config, methods=(method,)).specs(parse_set(
            [f"prune.sparsity={sparsity}", "federate.batch_size=10",
             "federate.local_epochs=1", "data.train_size=4000"]))
        splits = load_splits(spec.data, spec.seed)
        stages = pretrain_and_prune(spec, splits, CACHE)
        state = starting_weights(spec, splits, stages)
        model = fresh_model(spec, splits, "init")
        mask = stages.mask if method != "fedavg" else Mask.full(model)
        if data is None:
            data = Labeled(torch.cat([c.x for c in splits.clients])[:400],
                           torch.cat([c.y for c in splits.clients])[:400])
        trainer = LocalTrainer(model, mask, spec.federate, splits.input_shape)
        trainer.warm_up(state, data)
        update_s = median_cpu_s(lambda t=trainer, s=state, d=data: t.update(
            s, d, torch.Generator().manual_seed(0)), repeat=3)
        label = f"{method} s{round(sparsity * 100)}" if method != "fedavg" else "fedavg"
        rows = measure(label, mask, state, update_s, table)
        for ratio, mask_ratio, code_ratio, stateless_ratio in rows:
            worst = max(worst, ratio)
            worst_mask = max(worst_mask, mask_ratio)
            worst_time = max(worst_time, code_ratio)
            worst_stateless = max(worst_stateless, stateless_ratio)
    rng = np.random.default_rng(0)
    for sparsity in (0.8, 0.9, 0.95):
        shapes = {n: m.shape for n, m in mask.items()}
        random = Mask({n: torch.from_numpy(rng.random(s) >= sparsity) for n, s in shapes.items()})
        codec = Codec(random)
        msg = codec.encode_mask()
        ratio = 8 * len(msg) / maskcode.entropy_bits(codec._flat_mask)
        worst_mask = max(worst_mask, ratio)
        enc = median_cpu_s(lambda c=random: Codec(c).encode_mask(), repeat=3)
        dec = median_cpu_s(lambda c=codec, m=msg: c.decode_mask(m), repeat=3)
        table.append({"mask": f"random s{round(sparsity * 100)}", "mask_bytes": len(msg),
                      "mask_over_entropy": ratio, "mask_encode_ms": 1e3 * enc,
                      "mask_decode_ms": 1e3 * dec})
        print(f"{f'random s{round(sparsity * 100)}':22} {'-':6} {'':>10} {'':>6} {'':>10} "
              f"{'':>6} {'':>6} {len(msg):>8,} {ratio:7.4f}   mask encode {1e3 * enc:.1f} ms, "
              f"decode {1e3 * dec:.1f} ms")
    targets = {"p3_payload_bytes_over_limit": worst, "p3_mask_bits_over_entropy": worst_mask,
               "p3_client_coding_cpu_over_update": worst_time,
               "p3_stateless_client_coding_cpu_over_update": worst_stateless}
    out = ROOT / "benchmarks" / "results" / "payload_bytes.json"
    out.write_text(json.dumps({"rows": table, "targets": targets, "cpu": cpu_model(),
                               "git": git_commit(), "versions": versions(),
                               "argv": sys.argv}, indent=2) + "\n")
    if args.doc:
        write_doc(args.doc, render(json.loads(out.read_text())))
    print(f"p3_payload_bytes_over_limit: {worst:.4f}")
    print(f"p3_mask_bits_over_entropy: {worst_mask:.4f}")
    print(f"p3_client_coding_cpu_over_update: {worst_time:.4f}")
    print(f"p3_stateless_client_coding_cpu_over_update: {worst_stateless:.4f}")


def measure(label: str, mask: Mask, state: dict, update_s: float, table: list[dict]
            ) -> list[tuple[float, float, float, float]]:
    out = []
    for values in VALUE_CODES:
        lossy = values in ("q8", "q4")
        codec = Codec(mask, values, upload="change" if lossy else "model",
                      error_feedback=lossy)
        payload, msg = codec.encode(state), codec.encode_mask()
        limit = value_limit(codec, values)
        old_mask = min(1 + (codec.numel + 7) // 8, 1 + 4 * codec.nnz) if msg else 0
        first, first_limit = len(payload) + len(msg), limit + old_mask
        fl = flower_bytes(payload, msg)
        ratios = [len(payload) / limit, first / first_limit]
        if fl is not None:
            ratios.append(fl / first)
        mask_ratio = 8 * len(msg) / maskcode.entropy_bits(codec._flat_mask) if msg else 0.0
        rng = np.random.default_rng(0)
        change = np.zeros(codec.size, np.float32)
        residual = np.zeros(codec.size, np.float32)

        def client(c=codec, p=payload, ch=change, r=residual, g=rng) -> None:
            received = c.decode(p)
            if c.update.is_model:
                c.encode(received)
            else:
                c.update.encode(ch + c.kept(received) * 1e-3, r, g)

        code_s = median_cpu_s(client, repeat=5)
        mask_s = median_cpu_s(lambda c=codec, m=msg: c.decode_mask(m), repeat=3) if msg else 0.0
        out.append((max(ratios), mask_ratio, code_s / update_s, (code_s + mask_s) / update_s))
        table.append({"mask": label, "values": values, "payload_bytes": len(payload),
                      "payload_limit": limit, "first_download_bytes": first,
                      "first_download_limit": first_limit, "flower_bytes": fl,
                      "mask_bytes": len(msg), "mask_over_entropy": mask_ratio,
                      "coding_ms": 1e3 * code_s, "mask_decode_ms": 1e3 * mask_s,
                      "update_ms": 1e3 * update_s})
        print(f"{label:22} {values:6} {len(payload):>10,} {ratios[0]:6.4f} {first:>10,} "
              f"{ratios[1]:6.4f} {(fl or 0) / first:6.4f} {len(msg):>8,} "
              f"{mask_ratio:7.4f} {1e3 * code_s:7.1f} {1e3 * mask_s:7.1f} "
              f"{1e3 * update_s:9.1f} {code_s / update_s:7.4f} "
              f"{(code_s + mask_s) / update_s:8.4f}")
    return out


if __name__ == "__main__":
    main()
