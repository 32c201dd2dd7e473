import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedticket.errors import ConfigError
from fedticket.spec import (
    METHODS,
    DataSpec,
    ExperimentSpec,
    FederateSpec,
    PruneSpec,
    load_config,
    parse_config,
    parse_set,
    spec_from_dict,
    with_method,
)

ROOT = Path(__file__).resolve().parents[1]


def test_hashes_regression():
    # Pinned: changing the hashing or adding a field with a default must not rename runs.
    assert ExperimentSpec().hash() == "44136fa355"  # sha256 of "{}"
    spec = replace(ExperimentSpec(), seed=1)
    assert spec.nondefault() == {"seed": 1}
    assert spec.hash() == "fbe47f6d82"  # sha256 of {"seed":1}
    spec = replace(ExperimentSpec(), prune=PruneSpec(sparsity=0.5))
    assert spec.nondefault() == {"prune.sparsity": 0.5}
    assert spec.hash() == "44cce5bcfc"  # sha256 of {"prune.sparsity":0.5}


def test_run_name_has_method_seed_and_hash():
    spec = with_method(replace(ExperimentSpec(), seed=3), "fedavg")
    assert spec.run_name() == f"fedavg_s3_{spec.hash()}"
    assert spec.pretrain.kind == "none" and spec.prune.strategy == "none"


def test_presets_cover_the_methods():
    assert list(METHODS) == [
        "fedavg", "fedavg-dae", "random-mask-unscaled", "random-ticket", "magnitude-init",
        "dae-ticket", "dae-ticket-rewind", "supervised-ticket", "dae-ticket-fast",
        "fedavg-thin", "random-ticket-fast", "dae-ticket-bn", "dae-ticket-fast-bn",
        "synflow-ticket", "snip-ticket", "feddst",
        "feddst-0.05", "feddst-0.5", "fedpm", "topk-ef", "topk-ef-dae", "qsgd-8", "qsgd-4",
        "qsgd-8-dae", "qsgd-4-dae", "topk-ef-2way", "dae-ticket-topk", "dae-ticket-qsgd",
    ]
    s = with_method(ExperimentSpec(), "fedpm")
    assert (s.federate.rule, s.federate.compute, s.federate.lr) == ("fedpm", "dense-masked", 0.1)
    s = with_method(ExperimentSpec(), "topk-ef-2way")
    assert (s.federate.upload, s.federate.download, s.federate.error_feedback) == (
        "topk", "topk", True)
    s = with_method(ExperimentSpec(), "topk-ef-dae")
    assert (s.pretrain.kind, s.prune.strategy, s.federate.upload, s.federate.error_feedback,
            s.federate.upload_density) == ("dae", "none", "topk", True, 0.2)
    s = with_method(ExperimentSpec(), "qsgd-4")
    assert (s.pretrain.kind, s.federate.upload, s.federate.upload_bits,
            s.federate.error_feedback) == ("none", "qsgd", 4, False)
    s = with_method(ExperimentSpec(), "feddst")
    assert (s.prune.scope, s.federate.readjust_every, s.federate.readjust_alpha,
            s.federate.compute) == ("erk", 1, 0.01, "dense-masked")
    s = with_method(ExperimentSpec(), "dae-ticket-fast-bn")
    assert (s.prune.structure, s.prune.recalibrate_bn) == ("channels", True)
    s = with_method(ExperimentSpec(), "snip-ticket")
    assert (s.pretrain.kind, s.prune.strategy, s.prune.snip_fraction) == ("none", "snip", 1.0)
    s = with_method(ExperimentSpec(), "dae-ticket-fast")
    assert (s.pretrain.kind, s.prune.structure, s.federate.compute) == ("dae", "channels", "auto")
    s = with_method(ExperimentSpec(), "dae-ticket-rewind")
    assert (s.pretrain.kind, s.prune.strategy, s.weights.init) == ("dae", "magnitude", "rewind")
    s = with_method(ExperimentSpec(), "supervised-ticket")
    assert s.pretrain.kind == "supervised"


def test_config_makes_one_spec_per_method_and_seed_and_overrides_win():
    cfg = parse_config({"methods": ["fedavg", "dae-ticket"], "seeds": [0, 1],
                        "federate": {"rounds": 3}})
    specs = cfg.specs(parse_set(["federate.lr=0.5", "weights.init=reinit"]))
    assert [(s.method, s.seed) for s in specs] == [
        ("fedavg", 0), ("fedavg", 1), ("dae-ticket", 0), ("dae-ticket", 1)]
    assert all(s.federate.rounds == 3 and s.federate.lr == 0.5 for s in specs)
    assert all(s.weights.init == "reinit" for s in specs)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"federate": {"lrr": 0.1}}, "unknown config key 'federate.lrr'"),
        ({"foo": 1}, "unknown config key 'foo'"),
        ({"methods": ["dae-tiket"]}, "unknown method 'dae-tiket'"),
        ({"prune": {"sparsity": 1.0}}, "prune.sparsity must be in [0, 1)"),
        ({"prune": {"sparsity": -0.1}}, "prune.sparsity must be in [0, 1)"),
        ({"data": {"dataset": "mnist2"}}, "unknown data.dataset 'mnist2'"),
        ({"model": {"name": "resnet"}}, "unknown model.name 'resnet'"),
        ({"federate": {"rounds": "ten"}}, "federate.rounds must be an integer"),
        ({"federate": {"client_fraction": 0}}, "federate.client_fraction must be in (0, 1]"),
    ],
)
def test_bad_config_is_one_clear_line(raw, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_int_accepted_for_float_field_and_types_checked():
    cfg = parse_config({"federate": {"lr": 1}})
    assert cfg.base.federate.lr == 1.0 and isinstance(cfg.base.federate.lr, float)


def test_spec_json_round_trip():
    spec = with_method(
        replace(ExperimentSpec(), seed=4, data=DataSpec(num_clients=7),
                federate=FederateSpec(rounds=2)), "random-mask-unscaled")
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.hash() == spec.hash()


def test_shipped_configs_load():
    quick = load_config(ROOT / "configs" / "quick.toml")
    assert len(quick.methods) == 9 and quick.methods[-1] == "dae-ticket-fast"
    full = load_config(ROOT / "configs" / "fmnist.toml")
    assert full.base.data.num_clients == 100 and full.base.federate.client_fraction == 0.1


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
