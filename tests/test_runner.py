"""The server stages in the runner: pretrain + prune caching, iterative levels, weight modes."""

import torch

from fedticket.data import load_splits
from fedticket.runner import fresh_model, pretrain_and_prune, starting_weights
from fedticket.spec import parse_config, with_method

BASE = parse_config({
    "data": {"dataset": "digits", "pool_size": 300, "num_clients": 3},
    "model": {"name": "cnn-digits"},
    "pretrain": {"epochs": 1, "batch_size": 32},
    "prune": {"sparsity": 0.75},
}).base


def stages_for(method, tmp_path, **prune):
    spec = with_method(BASE, method)
    if prune:
        from dataclasses import replace
        spec = replace(spec, prune=replace(spec.prune, **prune))
    splits = load_splits(spec.data, spec.seed, oracle_labels=spec.pretrain.kind == "supervised")
    return spec, splits, pretrain_and_prune(spec, splits, tmp_path)


def test_weight_modes(tmp_path):
    spec, splits, st = stages_for("dae-ticket", tmp_path)
    init = fresh_model(spec, splits, "init").state_dict()
    mask = st.mask
    pretrained = starting_weights(spec, splits, st)
    rewind = starting_weights(with_method(spec, "dae-ticket-rewind"), splits, st)
    from dataclasses import replace
    reinit = starting_weights(replace(spec, weights=replace(spec.weights, init="reinit")),
                              splits, st)
    for name in init:
        m = mask.float(name)
        assert torch.equal(rewind[name], init[name] * m)
        assert torch.equal(pretrained[name], st.trained[name] * m)
        assert bool((reinit[name][~mask[name]] == 0).all())
    # the DAE changed the body but not the head; reinit differs from both
    assert not torch.equal(pretrained["body.conv1.weight"], rewind["body.conv1.weight"])
    assert torch.equal(pretrained["head.weight"], rewind["head.weight"])
    assert not torch.equal(reinit["body.fc1.weight"], rewind["body.fc1.weight"])


def test_stages_are_cached_and_shared(tmp_path):
    _, _, first = stages_for("dae-ticket", tmp_path)
    assert first.log["cached"] is False and first.log["pretrain"]["cached"] is False
    _, _, again = stages_for("dae-ticket-rewind", tmp_path)  # same data/model/pretrain/prune
    assert again.log["cached"] is True and again.mask == first.mask
    _, _, dense = stages_for("fedavg-dae", tmp_path)  # same pretraining, no pruning
    assert dense.log["pretrain"]["cached"] is True and dense.mask.is_full
    assert torch.equal(dense.trained["body.fc1.weight"], first.trained["body.fc1.weight"])


def test_iterative_levels_retrain_and_reach_the_target_density(tmp_path):
    _, _, st = stages_for("dae-ticket", tmp_path, levels=2, retrain_epochs=1)
    levels = st.log["prune"]["levels"]
    assert [lv["level"] for lv in levels] == [1, 2]
    assert levels[0]["retrain_losses"] == [] and len(levels[1]["retrain_losses"]) == 1
    prunable = sum(st.mask[n].numel() for n in st.prunable)
    kept = sum(int(st.mask[n].sum()) for n in st.prunable)
    # keep (1 - 0.75) ** 0.5 = 0.5 per level: 12,944 -> 6,472 -> 3,236
    assert prunable == 12944 and kept == 3236
    # retraining under the level-1 mask left its 6,472 pruned weights at exactly zero
    # (the weights pruned at level 2 keep their values until starting_weights masks them)
    zeros = sum(int((st.trained[n] == 0).sum()) for n in st.prunable)
    assert 6472 <= zeros < 12944 - 3236
    assert st.log["server_flops"] > st.log["pretrain"]["flops"]


def test_supervised_oracle_and_random_mask(tmp_path):
    _, _, oracle = stages_for("supervised-ticket", tmp_path)
    assert oracle.log["pretrain_kind"] == "supervised"
    _, _, rnd = stages_for("random-mask-unscaled", tmp_path)
    assert rnd.mask.nnz == oracle.mask.nnz and rnd.mask != oracle.mask
    _, _, dense = stages_for("fedavg", tmp_path)
    assert dense.mask.is_full and "pretrain" not in dense.log


def test_random_ticket_matches_the_dae_ticket_layer_by_layer(tmp_path):
    spec, splits, ticket = stages_for("dae-ticket", tmp_path)
    rspec, _, rnd = stages_for("random-ticket", tmp_path)
    assert rnd.log["pretrain"]["cached"]  # the DAE it takes its densities from is shared
    for name in ticket.prunable:
        assert int(rnd.mask[name].sum()) == int(ticket.mask[name].sum()), name
        assert not torch.equal(rnd.mask[name], ticket.mask[name]), name
    # fresh weights, each kept row scaled by sqrt(fan_in / kept inputs of that row)
    start = starting_weights(rspec, splits, rnd)
    fresh = fresh_model(rspec, splits, "reinit").state_dict()
    name = "body.fc1.weight"
    kept = rnd.mask[name].sum(dim=1)
    row = int(kept.argmax())
    cols = rnd.mask[name][row]
    expected = fresh[name][row][cols] * (rnd.mask[name].shape[1] / int(kept[row])) ** 0.5
    torch.testing.assert_close(start[name][row][cols], expected)
    assert bool((start[name][~rnd.mask[name]] == 0).all())


def test_iterative_masks_do_not_depend_on_whether_pretraining_was_cached(tmp_path):
    fresh = stages_for("dae-ticket", tmp_path / "a", levels=2, retrain_epochs=1)[2]
    stages_for("fedavg-dae", tmp_path / "b")  # fills the pretraining cache only
    cached = stages_for("dae-ticket", tmp_path / "b", levels=2, retrain_epochs=1)[2]
    assert cached.log["pretrain"]["cached"] and not fresh.log["pretrain"]["cached"]
    assert cached.mask == fresh.mask


def test_a_stage_cache_made_by_other_code_is_not_reused(tmp_path, monkeypatch):
    """Caches are named by the stages' source as well as the spec: after a change to the
    pretraining or pruning code the stages run again instead of loading a stale mask."""
    from fedticket import paths

    _, _, first = stages_for("dae-ticket", tmp_path)
    monkeypatch.setattr(paths, "stage_code_hash", lambda: "0therc0d")  # the code changed
    _, _, again = stages_for("dae-ticket", tmp_path)
    assert again.log["cached"] is False and again.log["pretrain"]["cached"] is False
    names = sorted(p.name for p in (tmp_path / "_cache").glob("*.npz"))
    assert len(names) == 4 and sum("0therc0d" in n for n in names) == 2


def test_the_code_hash_follows_the_source(tmp_path):
    from fedticket.paths import code_hash

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "dae.py").write_text("NOISE = 0.3\n")
    (tmp_path / "stages.py").write_text("x = 1\n")
    before = code_hash(tmp_path, ("pretrain", "stages.py"))
    assert code_hash(tmp_path, ("pretrain", "stages.py")) == before
    (tmp_path / "pretrain" / "dae.py").write_text("NOISE = 0.5\n")
    assert code_hash(tmp_path, ("pretrain", "stages.py")) != before
    assert code_hash(tmp_path, ("pretrain", "stages.py"), salt="2.13.0") != code_hash(
        tmp_path, ("pretrain", "stages.py"))
