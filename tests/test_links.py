"""A run's wall-clock time on slow links and slow devices, modeled from its ledger
(``fedticket compare --links``): the arithmetic by hand, the paired saving, bad input."""

import json

import pytest

from fedticket.cli import main
from fedticket.errors import FedticketError
from fedticket.report.links import compare_times, load_profile, round_times, time_to_target
from fedticket.report.runs import Run


def fake_run(folder, method, seed, clients, accuracies):
    """A run folder with only what the model reads: its clients' records and the
    accuracy of each round."""
    folder.mkdir(parents=True)
    (folder / "clients.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clients))
    metrics = [{"round": r, "test_accuracy": a} for r, a in enumerate(accuracies)]
    return Run(name=folder.name, method=method, seed=seed, path=folder, metrics=metrics,
               summary={}, spec={}, density=None, layers={})


def rec(round_, client, down, up, cpu_s, mask=0):
    return {"round": round_, "client": client, "down_bytes": down, "mask_bytes": mask,
            "up_bytes": up, "cpu_s": cpu_s}


def test_a_constrained_phone_takes_the_seconds_its_bytes_and_quarter_core_give():
    p = load_profile("constrained")
    link, device = p.classes(7)
    assert (link.down_mbit, link.up_mbit, device.cpu_share) == (1.6, 0.768, 0.25)
    # 200,000 bytes down at 1.6 Mbit/s: 1 s; 0.5 CPU s on a quarter core: 2 s;
    # 96,000 bytes up at 0.768 Mbit/s: 1 s
    split = p.client_s(7, 200_000, 96_000, 0.5)
    assert split == pytest.approx({"down_s": 1.0, "compute_s": 2.0, "up_s": 1.0})


def test_a_round_lasts_as_long_as_its_slowest_client_plus_the_overhead(tmp_path):
    p = load_profile("constrained", overhead_s=10.0)
    run = fake_run(tmp_path / "a", "m", 0, [
        rec(1, 0, 200_000, 96_000, 0.5),              # 1 + 2 + 1 = 4 s
        rec(1, 1, 100_000, 96_000, 0.25, mask=100_000),  # 1 + 1 + 1 = 3 s
        rec(2, 0, 400_000, 192_000, 0.5),             # 2 + 2 + 2 = 6 s
    ], [0.1, 0.6, 0.8])
    rows = round_times(run, p)
    assert [(r["round"], r["client"]) for r in rows] == [(1, 0), (2, 0)]
    assert [r["seconds"] for r in rows] == pytest.approx([14.0, 16.0])
    assert time_to_target(run, 0.5, p) == pytest.approx(14.0)
    assert time_to_target(run, 0.8, p) == pytest.approx(30.0)
    assert time_to_target(run, 0.9, p) is None


def test_the_saving_in_time_is_paired_by_seed_and_judged(tmp_path):
    p = load_profile("constrained")
    runs = []
    for seed, (base_cpu, fast_cpu) in enumerate([(4.0, 1.0), (4.0, 1.1), (4.0, 0.9)]):
        runs.append(fake_run(tmp_path / f"b{seed}", "fedavg", seed,
                             [rec(1, 0, 0, 0, base_cpu)], [0.1, 0.8]))
        runs.append(fake_run(tmp_path / f"f{seed}", "fast", seed,
                             [rec(1, 0, 0, 0, fast_cpu)], [0.1, 0.8]))
    got = compare_times(runs, 0.7, p, "fedavg")
    fast = got["methods"]["fast"]
    # compute on a quarter core: 16 s against 4, 4.4 and 3.6 s; ratios 0.25, 0.275, 0.225
    assert fast["minutes"] == pytest.approx({"0": 4 / 60, "1": 4.4 / 60, "2": 3.6 / 60})
    assert fast["saving_pct"]["mean"] == pytest.approx(
        100 * (1 - (0.25 * 0.275 * 0.225) ** (1 / 3)))
    assert fast["verdict"] == "yes" and got["methods"]["fedavg"]["verdict"] == "baseline"


def test_a_mixed_population_draws_the_same_classes_for_every_method():
    p = load_profile("mixed")
    draws = [p.classes(c) for c in range(200)]
    assert draws == [load_profile("mixed").classes(c) for c in range(200)]
    links = [link.name for link, _ in draws]
    assert 0.1 < links.count("constrained") / 200 < 0.3  # declared share 0.2
    assert 0.4 < links.count("mobile") / 200 < 0.6      # 0.5


def test_bad_profiles_get_one_line(tmp_path, capsys):
    with pytest.raises(FedticketError, match="no link profile 'lte'"):
        load_profile("lte")
    bad = tmp_path / "p.toml"
    bad.write_text('[links.a]\ndown_mbit = 1\nup_mbit = 1\n[devices.d]\ncpu_share = 1\n'
                   '[profiles.x]\nlinks = { a = 0.5 }\ndevices = { d = 1.0 }\n')
    with pytest.raises(FedticketError, match="shares add up to 0.5, not 1"):
        load_profile(f"{bad}:x")
    bad.write_text('[links.a]\ndown_mbit = 0\nup_mbit = 1\n[devices.d]\ncpu_share = 1\n'
                   '[profiles.x]\nlinks = { a = 1 }\ndevices = { d = 1.0 }\n')
    with pytest.raises(FedticketError, match="links.a.down_mbit must be a positive number"):
        load_profile(f"{bad}:x")
    assert main(["compare", str(tmp_path), "--links", "lte"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no link profile 'lte'" in err[0]
