"""Property-based tests: the codec's round trip at every density, and the spec loader,
which must answer any input with a spec or a one-line ConfigError, never a traceback."""

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedticket.accounting import Codec
from fedticket.errors import FedticketError
from fedticket.pruning import Mask
from fedticket.spec import SECTIONS, ExperimentSpec, load_config, parse_config

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------- codec


@st.composite
def masked_states(draw):
    """A mask of 1-4 tensors (each empty, full or anything between, some of size 0 or
    1) and a state that is zero outside it with arbitrary finite float32 values inside."""
    n = draw(st.integers(1, 4))
    mask, state = {}, {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
        size = int(np.prod(shape))
        kind = draw(st.sampled_from(["empty", "full", "random"]))
        if kind == "empty":
            keep = np.zeros(size, bool)
        elif kind == "full":
            keep = np.ones(size, bool)
        else:
            keep = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
        values = np.array(draw(st.lists(
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            min_size=size, max_size=size)), dtype=np.float32)
        mask[f"layer{i}.weight"] = torch.from_numpy(keep.reshape(shape))
        state[f"layer{i}.weight"] = torch.from_numpy(np.where(keep, values, 0).reshape(shape)
                                                     .astype(np.float32))
    return Mask(mask), state


@FAST
@given(masked_states())
def test_codec_round_trip_is_exact_at_every_density(case):
    mask, state = case
    codec = Codec(mask)
    payload = codec.encode(state)
    assert len(payload) == codec.payload_bytes == 4 * (mask.nnz if not mask.is_full
                                                       else mask.numel)
    back = codec.decode(payload)
    assert list(back) == list(state)
    for k in state:  # bit for bit, signed zeros included
        assert back[k].shape == state[k].shape
        assert back[k].numpy().tobytes() == state[k].numpy().tobytes()
    if not mask.is_full:
        again = codec.decode_mask(codec.encode_mask())
        for k in mask:
            assert torch.equal(again[k], mask[k])


@FAST
@given(masked_states(), st.binary(max_size=64))
def test_codec_refuses_any_other_payload_with_an_error_not_a_crash(case, junk):
    mask, _ = case
    codec = Codec(mask)
    if len(junk) == codec.payload_bytes:
        values = np.frombuffer(junk, "<f4") if junk else np.zeros(0, np.float32)
        if np.isfinite(values).all():
            codec.decode(junk)  # a payload of the right length and finite values is fine
            return
    with pytest.raises(FedticketError):
        codec.decode(junk)


# ----------------------------------------------------------------- spec loader

FIELD_NAMES = {s: [f.name for f in fields(type(getattr(ExperimentSpec(), s)))] for s in SECTIONS}
SCALARS = st.one_of(
    st.integers(-10**6, 10**6), st.floats(), st.booleans(), st.text(max_size=12),
    st.sampled_from(["dae-ticket", "fedavg", "iid", "dirichlet", "digits", "mlp", "gaussian",
                     "median", "nan", "inf", "-1", "0"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(
    st.text(max_size=5), SCALARS, max_size=2))


@st.composite
def documents(draw):
    doc = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "federat", "x"]), max_size=4)):
        names = FIELD_NAMES.get(section, []) + ["nope", "lrr"]
        doc[section] = draw(st.dictionaries(st.sampled_from(names), VALUES, max_size=4))
    for key in draw(st.lists(st.sampled_from(["methods", "seeds", "metods", "rounds"]),
                             max_size=2)):
        doc[key] = draw(st.one_of(VALUES, st.lists(st.sampled_from(
            ["fedavg", "dae-ticket", "dae-tiket"]), max_size=3)))
    return doc


@FAST
@given(documents())
def test_any_parsed_document_gives_a_spec_or_a_config_error(doc):
    try:
        config = parse_config(doc, "fuzz.toml")
        specs = config.specs()
    except FedticketError as e:
        assert "\n" not in str(e) and str(e)
        return
    for spec in specs:  # what is accepted is sound: no number that is not finite
        for section in SECTIONS:
            for f in fields(type(getattr(spec, section))):
                v = getattr(getattr(spec, section), f.name)
                if isinstance(v, float):
                    assert math.isfinite(v), (section, f.name, v)


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b)))
def test_any_file_gives_a_spec_or_a_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    try:
        load_config(path).specs()
    except FedticketError as e:
        assert "\n" not in str(e).strip()


# ------------------------------------------------------------------ the command line
COMMANDS = ["run", "study", "deploy", "flower-app", "compare", "export"]
OPTIONS = ["--out", "--seed", "--method", "--set", "--threads", "--jobs", "--workers",
           "--nodes", "--min-replies", "--round-timeout", "--target", "--baseline",
           "--dir", "--format", "--partition", "--plots", "--quick", "--json", "--tls",
           "--no-plots", "--full-size", "--summary", "--doc", "--quiet"]
words = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(["0", "-1", "1", "2", "1e9", "nan", "inf", "-inf", "0.5", "", " ",
                     "fedavg", "federate.rounds=0", "data.x=1", "=", "a.b=[[[", "x" * 300]),
    st.integers(-10**30, 10**30).map(str), st.floats().map(str), st.text(max_size=12))


@FAST
@given(command=st.sampled_from(COMMANDS), argv=st.lists(words, max_size=8))
def test_random_arguments_get_an_answer_never_a_traceback(tmp_path_factory, command, argv):
    """The parser and the config loader behind it, driven with random arguments: a
    parse error exits 2 with one line; parsed arguments give specs or a one-line error.
    (Nothing runs: the experiment config is the digits one, and only its specs are built.)"""
    import argparse
    import contextlib
    import io

    from fedticket import cli

    cfg = tmp_path_factory.mktemp("cli") / "c.toml"
    cfg.write_text('methods = ["fedavg"]\n[data]\ndataset = "digits"\n')
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli._parser().parse_args([command, str(cfg), *argv])
    except SystemExit as e:
        lines = err.getvalue().strip().splitlines()
        assert e.code in (0, 2) and (e.code == 0 or len(lines) == 1), err.getvalue()
        assert "Traceback" not in err.getvalue()
        return
    assert isinstance(args, argparse.Namespace)
    if command in ("run", "deploy", "flower-app"):
        try:
            specs = cli._specs(args)
        except FedticketError as e:
            assert "\n" not in str(e)
        else:
            assert specs and all(s.method for s in specs)
