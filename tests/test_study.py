"""The reproduction study: its file, its grid, its verdict, and the committed doc."""

from pathlib import Path

import pytest

from fedticket.errors import ConfigError
from fedticket.study import (
    best_variant,
    cells,
    load_study,
    partition_settings,
    read_summary,
    render,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_study_and_its_quick_grid():
    full = load_study(ROOT / "configs" / "study.toml")
    assert full.partitions == ("iid", "dirichlet-0.5", "dirichlet-0.3")
    assert full.targets == (0.70, 0.80) and full.seeds == (0, 1, 2)
    grid = cells(full)
    assert [len(v) for v in grid.values()] == [27, 27, 27]  # 9 methods x 3 seeds
    spec = grid["dirichlet-0.3"][0]
    assert (spec.data.partition, spec.data.dirichlet_alpha) == ("dirichlet", 0.3)
    assert spec.federate.targets == (0.70, 0.80) and spec.data.pool_size == 10000
    quick = load_study(ROOT / "configs" / "study.toml", quick=True)
    q = cells(quick)["iid"][0]
    assert quick.name == "study-quick" and q.federate.rounds == 12 and len(cells(quick)["iid"]) == 9


@pytest.mark.parametrize("name, settings", [
    ("iid", ['data.partition="iid"']),
    ("dirichlet-0.5", ['data.partition="dirichlet"', "data.dirichlet_alpha=0.5"]),
    ("shards-2", ['data.partition="shards"', "data.shards_per_client=2"]),
])
def test_partition_names(name, settings):
    assert partition_settings(name) == settings


@pytest.mark.parametrize("text, message", [
    ("[study]\nconfig='x'\n", "needs config, partitions, seeds and targets"),
    ("[stdy]\n", "needs a \\[study\\] section"),
    ("[study]\nconfig='x'\npartitions=['iid']\nseeds=[0]\ntargets=[1.5]\n", "targets are"),
    ("[study]\nconfig='x'\npartitions=['dirichlet-x']\nseeds=[0]\ntargets=[0.5]\n",
     "unknown partition"),
    ("[study]\nconfig='x'\npartitions=['iid']\nseeds=[0]\ntargets=[0.5]\nrounds=3\n",
     "unknown keys in \\[study\\]"),
    ("not = toml = at all", "not a valid TOML"),
])
def test_bad_study_files(tmp_path, text, message):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(p)


def stat(mean, n=3):
    return {"mean": mean, "std": 0.0, "n": n}


def fields(acc, traffic, flops, cpu, reached=3):
    costs = {"traffic_bytes_to_target": stat(traffic, reached),
             "client_flops_to_target": stat(flops, reached),
             "client_cpu_s_to_target": stat(cpu, reached),
             "rounds_to_target": stat(5.0, reached), "rounds_to_target_smoothed": stat(6.0)}
    return {"final_accuracy": stat(acc), **costs}


def test_verdict_needs_35_percent_of_every_cost_against_both_baselines():
    result = {"methods": {
        "fedavg": fields(0.80, 100.0, 100.0, 10.0),
        "fedavg-dae": fields(0.80, 80.0, 80.0, 8.0),
        "dae-ticket": fields(0.798, 20.0, 50.0, 6.0),
    }}
    v = verdict(result)
    # vs fedavg: traffic 80%, FLOPs 50%, CPU 40% -> yes
    assert v["fedavg"]["yes"] and v["fedavg"]["savings_pct"]["client_cpu_s_to_target"] == 40.0
    # vs fedavg-dae: CPU 1 - 6/8 = 25% -> no
    assert not v["fedavg-dae"]["yes"]
    b = best_variant(result)
    assert b["method"] == "dae-ticket" and b["traffic_x"] == 5.0 and b["cpu_x"] == 10.0 / 6.0
    # a seed that never reached the target: no saving can be claimed
    result["methods"]["dae-ticket"] = fields(0.798, 20.0, 50.0, 6.0, reached=2)
    assert not verdict(result)["fedavg"]["yes"]


def test_the_committed_reproduction_tables_are_render_of_the_committed_summaries():
    doc = (ROOT / "docs" / "REPRODUCTION.md").read_text()
    summaries = sorted((ROOT / "docs" / "results").glob("*.json"))
    assert summaries, "docs/results holds the study summaries the doc is made from"
    for path in summaries:
        begin = f"<!-- BEGIN {path.name} -->\n"
        end = f"<!-- END {path.name} -->"
        assert begin in doc and end in doc, path.name
        block = doc[doc.index(begin) + len(begin): doc.index(end)]
        assert block == render(read_summary(path)), path.name
