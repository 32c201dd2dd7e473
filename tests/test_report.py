"""Tests for fedticket.report on hand-made run folders with hand-checkable numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedticket.errors import FedticketError
from fedticket.report import (
    compare,
    default_target,
    format_table,
    load_runs,
    plot,
    to_markdown,
)
from fedticket.report.plots import X_AXES, curve, figure
from fedticket.report.runs import group_by_method

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(
    root: Path,
    method: str,
    seed: int,
    accs: list[float],
    traffic: list[int] | None = None,
    flops: list[float] | None = None,
    rounds: list[int] | None = None,
    density: float | None = None,
    finished: bool = True,
    name: str | None = None,
) -> Path:
    """A run folder; traffic is split 60/40 into down/up bytes (a tenth of it the mask's),
    wall time is 2 s a round."""
    rounds = rounds or list(range(len(accs)))
    traffic = traffic or [100 * r for r in rounds]
    flops = flops or [1e9 * r for r in rounds]
    path = root / (name or f"{method}_s{seed}_0123456789")
    path.mkdir(parents=True)
    spec = {"method": method, "seed": seed, "data": {}, "model": {}, "federate": {}}
    (path / "spec.json").write_text(json.dumps({"spec": spec, "git_commit": "abc"}))
    rows = [
        {
            "round": r,
            "test_accuracy": a,
            "test_loss": 1.0 - a,
            "cum_down_bytes": t * 6 // 10,
            "cum_up_bytes": t - t * 6 // 10,
            "cum_mask_bytes": t // 10,
            "cum_client_flops": f,
            "cum_client_wall_s": 2.0 * r,
            "cum_client_cpu_s": 3.0 * r,
        }
        for r, a, t, f in zip(rounds, accs, traffic, flops, strict=True)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if density is not None:
        (path / "mask_report.json").write_text(json.dumps({"density": density}))
    if finished:
        summary = {"method": method, "seed": seed, "final_accuracy": accs[-1]}
        summary["best_accuracy"] = max(accs)
        (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """fedavg reaches 0.8 at rounds 4 and 6 (400 and 600 bytes); dae-ticket at 300 and 350
    bytes; random-mask-unscaled seed 2 never reaches 0.8; plus folders that must be ignored."""
    write_run(tmp_path, "fedavg", 0, [0.1, 0.3, 0.5, 0.7, 0.8, 0.82, 0.83])
    write_run(tmp_path, "fedavg", 1, [0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.81])
    write_run(
        tmp_path,
        "dae-ticket",
        0,
        [0.2, 0.6, 0.7, 0.85, 0.86],
        traffic=[0, 100, 200, 300, 400],
        flops=[0, 2e8, 4e8, 6e8, 8e8],
        density=0.2,
    )
    write_run(
        tmp_path,
        "dae-ticket",
        1,
        [0.2, 0.5, 0.6, 0.7, 0.7, 0.75, 0.79, 0.84],
        traffic=[50 * r for r in range(8)],
        flops=[2e8 * r for r in range(8)],
        density=0.2,
    )
    for seed, last in enumerate([0.8, 0.9, 0.7]):
        write_run(tmp_path, "random-mask-unscaled", seed, [0.1, 0.5, last], density=0.2)
    # must be ignored: hidden, underscore, unfinished, nested, a plain file
    write_run(tmp_path, "fedavg", 7, [0.99], name=".fedavg_s7_hidden")
    write_run(tmp_path, "fedavg", 8, [0.99], name="_fedavg_s8_tmp")
    write_run(tmp_path, "fedavg", 9, [0.99], finished=False)
    write_run(tmp_path / "nested", "fedavg", 10, [0.99])
    (tmp_path / "notes.txt").write_text("not a run")
    return tmp_path


def test_load_runs_skips_unfinished_and_hidden(results: Path) -> None:
    runs = load_runs(results)
    assert [(r.method, r.seed) for r in runs] == [
        ("fedavg", 0),
        ("fedavg", 1),
        ("random-mask-unscaled", 0),
        ("random-mask-unscaled", 1),
        ("random-mask-unscaled", 2),
        ("dae-ticket", 0),
        ("dae-ticket", 1),
    ]
    dae = runs[5]
    assert dae.density == 0.2 and runs[0].density is None
    assert dae.spec["spec"]["method"] == "dae-ticket"
    assert dae.metrics[3]["cum_down_bytes"] + dae.metrics[3]["cum_up_bytes"] == 300


def test_compare_costs_to_target_and_savings(results: Path) -> None:
    result = compare(load_runs(results), target=0.8)
    assert result["target"] == 0.8 and result["baseline"] == "fedavg"
    fedavg, dae = result["methods"]["fedavg"], result["methods"]["dae-ticket"]

    assert fedavg["rounds_to_target"] == {"mean": 5.0, "std": pytest.approx(math.sqrt(2)), "n": 2,
                                          "seeds": {"0": 4.0, "1": 6.0}}
    traffic = fedavg["traffic_bytes_to_target"]
    assert traffic["mean"] == 500.0 and traffic["n"] == 2
    assert traffic["std"] == pytest.approx(141.4213562)  # sample std of 400, 600
    assert fedavg["client_flops_to_target"]["mean"] == pytest.approx(5e9)
    assert fedavg["client_wall_s_to_target"]["mean"] == 10.0
    assert fedavg["final_accuracy"]["mean"] == pytest.approx(0.82)

    # dae-ticket reaches 0.8 at round 3 (300 B, 6e8 FLOPs) and round 7 (350 B, 1.4e9 FLOPs);
    # savings pair the seeds: 1 - geometric mean of 300/400 and 350/600 (two seeds: no
    # interval)
    assert dae["traffic_bytes_to_target"]["mean"] == 325.0
    assert dae["traffic_saving_pct"] == {"mean": pytest.approx(33.86, abs=0.01), "lo": None,
                                         "hi": None, "std": None, "n": 2}
    assert dae["client_flops_saving_pct"]["mean"] == pytest.approx(  # 6e8/4e9, 1.4e9/6e9
        100 * (1 - math.sqrt(0.15 * 1.4 / 6)))
    assert dae["rounds_saving_pct"]["mean"] == pytest.approx(100 * (1 - math.sqrt(3 / 4 * 7 / 6)))
    assert dae["client_wall_s_saving_pct"]["mean"] == dae["rounds_saving_pct"]["mean"]
    assert dae["density"] == {"mean": 0.2, "std": 0.0, "n": 2}
    assert fedavg["density"] == {"mean": None, "std": None, "n": 0}
    assert fedavg["traffic_saving_pct"]["mean"] == 0.0
    # the whole runs: both fedavg runs have 7 rows (rounds 0-6), 600 bytes and 18 CPU s
    assert fedavg["traffic_bytes_run"]["seeds"] == {"0": 600.0, "1": 600.0}
    assert fedavg["client_cpu_s_run"]["seeds"] == {"0": 18.0, "1": 18.0}
    assert fedavg["mask_bytes_run"]["seeds"] == {"0": 60.0, "1": 60.0}  # a tenth of it


def test_run_that_never_reaches_target_is_null(results: Path) -> None:
    rm = compare(load_runs(results), target=0.8)["methods"]["random-mask-unscaled"]
    # seeds 0 and 1 reach 0.8 at round 2 (200 B); seed 2 never does
    assert rm["rounds_to_target"] == {"mean": 2.0, "std": 0.0, "n": 2,
                                      "seeds": {"0": 2.0, "1": 2.0, "2": None}}
    assert rm["traffic_bytes_to_target"]["n"] == 2
    assert rm["final_accuracy"]["n"] == 3
    # no saving over the two lucky seeds: one of three never got there
    assert rm["traffic_saving_pct"] == {"mean": None, "lo": None, "hi": None, "std": None,
                                        "n": 2}

    unreachable = compare(load_runs(results), target=0.95)["methods"]
    for fields in unreachable.values():
        assert fields["rounds_to_target"]["mean"] is None
        assert fields["rounds_to_target"]["n"] == 0
        assert fields["traffic_saving_pct"]["mean"] is None


def test_default_target_is_95_percent_of_baseline_best_rounded_down(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.1, 0.8237])
    write_run(tmp_path, "fedavg", 1, [0.1, 0.81267])
    write_run(tmp_path, "dae-ticket", 0, [0.1, 0.7])
    # 0.95 * mean(0.8237, 0.81267) = 0.95 * 0.818185 = 0.77727575 -> 0.777
    runs = load_runs(tmp_path)
    assert default_target(runs) == 0.777
    result = compare(runs)
    assert result["target"] == 0.777
    assert result["methods"]["fedavg"]["rounds_to_target"]["n"] == 2
    assert result["methods"]["dae-ticket"]["rounds_to_target"]["n"] == 0  # never reached


def test_default_target_without_baseline_is_min_best_over_runs(tmp_path: Path) -> None:
    write_run(tmp_path, "dae-ticket", 0, [0.1, 0.8237])
    write_run(tmp_path, "random-mask-unscaled", 0, [0.1, 0.61267])
    assert default_target(load_runs(tmp_path)) == 0.612


def test_default_target_exact_value_is_not_rounded_below(tmp_path: Path) -> None:
    write_run(tmp_path, "dae-ticket", 0, [0.1, 0.29])  # 0.29 * 1000 = 289.99999999999994
    assert default_target(load_runs(tmp_path)) == 0.29


def test_canonical_method_order(tmp_path: Path) -> None:
    for method in ["zeta", "dae-ticket", "alpha", "fedavg", "random-mask-unscaled", "fedavg-dae"]:
        write_run(tmp_path, method, 0, [0.1, 0.9])
    result = compare(load_runs(tmp_path), target=0.5)
    assert list(result["methods"]) == [
        "fedavg",
        "fedavg-dae",
        "random-mask-unscaled",
        "dae-ticket",
        "alpha",
        "zeta",
    ]


def test_missing_baseline_gives_null_savings(tmp_path: Path) -> None:
    write_run(tmp_path, "dae-ticket", 0, [0.1, 0.9])
    fields = compare(load_runs(tmp_path), target=0.5)["methods"]["dae-ticket"]
    assert fields["traffic_saving_pct"] == {"mean": None, "lo": None, "hi": None, "std": None,
                                            "n": 0}
    assert fields["rounds_to_target"] == {"mean": 1.0, "std": 0.0, "n": 1, "seeds": {"0": 1.0}}


def test_result_is_strict_json(results: Path) -> None:
    result = compare(load_runs(results))
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert set(result) == {"target", "baseline", "oracles", "methods"}
    costs = {"rounds_to_target", "traffic_bytes_to_target", "client_flops_to_target",
             "client_wall_s_to_target", "client_cpu_s_to_target"}
    assert set(result["methods"]["fedavg"]) == costs | {f"{c}_smoothed" for c in costs} | {
        "traffic_bytes_run",
        "client_cpu_s_run",
        "mask_bytes_run",
        "final_accuracy",
        "best_accuracy",
        "density",
        "traffic_saving_pct",
        "client_flops_saving_pct",
        "client_wall_s_saving_pct",
        "client_cpu_s_saving_pct",
        "rounds_saving_pct",
    }
    # fedavg reaches 0.8 at rounds 4 and 6: 3 CPU s per round
    assert result["methods"]["fedavg"]["client_cpu_s_to_target"]["mean"] == 15.0


def test_tables(results: Path) -> None:
    result = compare(load_runs(results), target=0.8)
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].startswith("target test accuracy 0.800")
    assert len(lines) == 3 + 3  # title, header, rule, one row per method
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width
    fedavg_row = next(line for line in lines if line.startswith("fedavg"))
    assert "5.0±1.4" in fedavg_row and "0.001±0.000" in fedavg_row  # 500±141 B in MB
    assert "—" in fedavg_row  # no density for fedavg
    assert "33.9" in next(line for line in lines if line.startswith("dae-ticket"))
    assert "2/3" in next(line for line in lines if line.startswith("random-mask-unscaled"))

    md = to_markdown(result).splitlines()
    assert md[0] == lines[0]
    assert md[2].startswith("| method | n | reached |") and md[3].startswith("| :-- | --: |")
    assert md[4].startswith("| fedavg | 2 | 2/2 |")


def test_plots_are_pngs(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "sub"
    paths = plot(load_runs(results), out, target=0.8)
    assert [p.name for p in paths] == [
        "accuracy_vs_round.png",
        "accuracy_vs_traffic.png",
        "accuracy_vs_flops.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        assert p.stat().st_size > 10_000
    assert sorted(out.iterdir()) == sorted(paths)  # no temp files left behind


def test_costs_are_on_log_axes_from_round_1(results: Path) -> None:
    groups = group_by_method(load_runs(results))
    scales = {name: figure(groups, axis).axes[0] for name, axis in X_AXES.items()}
    assert [ax.get_xscale() for ax in scales.values()] == ["linear", "log", "log"]
    fedavg = scales["accuracy_vs_traffic.png"].lines[0]
    # fedavg's seeds share rounds 0..6; round 0 (no traffic yet) is left out on the log axis
    assert fedavg.get_xdata()[0] == pytest.approx(100e-6) and len(fedavg.get_xdata()) == 6


def test_curve_uses_rounds_common_to_all_seeds(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.1, 0.5, 0.7], rounds=[0, 2, 4])
    write_run(tmp_path, "fedavg", 1, [0.1, 0.3, 0.6, 0.9, 0.8], rounds=[0, 1, 2, 3, 4])
    x, mean, lo, hi = curve(load_runs(tmp_path), lambda r: r["round"])
    assert x.tolist() == [0, 2, 4]
    assert mean.tolist() == pytest.approx([0.1, 0.55, 0.75])
    assert lo.tolist() == [0.1, 0.5, 0.7] and hi.tolist() == [0.1, 0.6, 0.8]


@pytest.mark.parametrize("setup", ["empty", "unfinished", "missing"])
def test_no_runs_is_an_error(tmp_path: Path, setup: str) -> None:
    if setup == "unfinished":
        write_run(tmp_path, "fedavg", 0, [0.1], finished=False)
    root = tmp_path / "nope" if setup == "missing" else tmp_path
    with pytest.raises(FedticketError):
        load_runs(root)


def test_duplicate_method_seed_is_an_error(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.1], name="fedavg_s0_aaaaaaaaaa")
    write_run(tmp_path, "fedavg", 0, [0.1], name="fedavg_s0_bbbbbbbbbb")
    with pytest.raises(FedticketError, match="two runs of fedavg seed 0"):
        load_runs(tmp_path)


def test_malformed_metrics_is_an_error(tmp_path: Path) -> None:
    path = write_run(tmp_path, "fedavg", 0, [0.1, 0.5])
    (path / "metrics.jsonl").write_text('{"round": 0, "test_accuracy": 0.1}\n')
    with pytest.raises(FedticketError, match="lacks"):
        load_runs(tmp_path)


def test_round_zero_is_not_a_reach_and_the_oracle_is_marked(tmp_path: Path) -> None:
    # the oracle starts above the target (round 0: 0.9), dips, and is back at round 2
    write_run(tmp_path, "supervised-ticket", 0, [0.9, 0.5, 0.85])
    write_run(tmp_path, "fedavg", 0, [0.1, 0.6, 0.82])
    result = compare(load_runs(tmp_path), target=0.8)
    oracle = result["methods"]["supervised-ticket"]
    assert oracle["rounds_to_target"]["mean"] == 2.0  # not 0
    assert oracle["traffic_bytes_to_target"]["mean"] == 200.0  # 100 B a round
    # same rounds as fedavg: no saving, where round 0 used to give "100%"
    assert oracle["rounds_saving_pct"]["mean"] == 0.0
    assert result["oracles"] == ["supervised-ticket"]
    text = format_table(result)
    assert "supervised-ticket (oracle)" in text and "uses the server pool's labels" in text
    assert "fedavg (oracle)" not in text


def test_smoothed_reach_needs_the_mean_of_three_evaluations_to_stay_above(tmp_path: Path):
    # rounds 1..6: a lucky spike at round 2, then a real climb
    write_run(tmp_path, "fedavg", 0, [0.1, 0.5, 0.9, 0.5, 0.8, 0.9, 0.85])
    fields = compare(load_runs(tmp_path), target=0.8)["methods"]["fedavg"]
    assert fields["rounds_to_target"]["mean"] == 2.0
    # trailing means: r1 .5, r2 .7, r3 .633, r4 .733, r5 .733, r6 .85 -> held from round 6
    assert fields["rounds_to_target_smoothed"]["mean"] == 6.0
    assert fields["traffic_bytes_to_target_smoothed"]["mean"] == 600.0
    # a run that ends below the target has no robust reach even if it touched it
    write_run(tmp_path, "dae-ticket", 0, [0.1, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2])
    fields = compare(load_runs(tmp_path), target=0.8)["methods"]["dae-ticket"]
    assert fields["rounds_to_target"]["mean"] == 1.0
    assert fields["rounds_to_target_smoothed"]["n"] == 0
