"""Results sentences quote only numbers their committed summaries give (tests/prose.py)."""

import json
import math
import re
from pathlib import Path

import pytest
from tests.conftest import needs_fmnist
from tests.prose import numbers, quotable, unquoted

from fedticket.models import build, prunable_names
from fedticket.spec import ModelSpec
from fedticket.study import read_summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def summary(name):
    return read_summary(RESULTS / f"{name}.json")


def cnn_facts():
    """What the FedAvg CNN's wire format gives (tests/test_accounting.py checks the
    codec): parameters in millions, the mask bitmap and the payload at 80% sparsity in MB,
    and the kept share in percent."""
    model = build(ModelSpec(name="cnn-fedavg"), (1, 28, 28), 10)
    params = sum(p.numel() for p in model.parameters())
    prunable = sum(dict(model.named_parameters())[n].numel() for n in prunable_names(model))
    kept = params - round(0.8 * prunable)
    return [f"{params / 1e6:.2f}", f"{math.ceil(params / 8) / 1e6:.2f}",
            f"{4 * kept / 1e6:.2f}", f"{100 * kept / params:.1f}"]


def section(text, start, end):
    i = text.index(start)
    return text[i: text.index(end, i)]


DOC = (ROOT / "docs" / "REPRODUCTION.md").read_text()

# (passage, the summaries it draws on, the settings it names: targets, bars,
# sparsities, partitions, pool sizes -- inputs, not results)
SWEEP_VERDICTS = {
    "sweep-sparsity": (["sweep-sparsity"], ["50", "80", "90", "95", "0.80", "0.5", "25", "3"]),
    "sweep-sparsity-skewed": (["sweep-sparsity-skewed"], ["0.3", "95", "0.70", "0.80", "0.5",
                                                          "80", "25"]),
    "sweep-init": (["sweep-init", "sweep-sparsity"], ["80", "0.5", "0.80"]),
    "sweep-stateless": (["sweep-stateless"], ["0.80", "0.5", "0.4", *cnn_facts()]),
    "sweep-pool": (["sweep-pool"], ["0.5", "35", "1,438", "0.80", "1k", "5k", "10k"]),
    "sweep-noise": (["sweep-noise"], ["35", "0.1", "0.3", "0.5", "0.80"]),
}


@pytest.mark.parametrize("name", SWEEP_VERDICTS)
def test_a_sweeps_verdict_quotes_its_summary(name):
    sources, settings = SWEEP_VERDICTS[name]
    end = DOC.index(f"<!-- BEGIN {name}.json -->")
    text = DOC[DOC.rindex("**Verdict.**", 0, end): end]
    assert unquoted(text, [summary(s) for s in sources], settings) == []


def test_the_checker_catches_a_number_no_summary_gives():
    s = summary("sweep-noise")
    some = sorted(n for n in quotable(s) if "." in n)[:1]
    assert some and unquoted(f"it ends at {some[0]}", [s], []) == []
    assert unquoted("it ends at 0.8123 with 41.7x less traffic", [s], []) == ["0.8123", "41.7"]
    assert numbers("+7.0% / -1.5%, 1,438 images, Dirichlet(0.3)") == ["7.0", "1.5", "1,438",
                                                                         "0.3"]


@needs_fmnist
def test_the_client_sizes_the_settings_give_are_the_partitions():
    from fedticket.data import load_splits
    from fedticket.study import cells, load_study

    sizes: dict[str, list[int]] = {}
    for part, specs in cells(load_study(ROOT / "configs" / "study.toml")).items():
        for spec in {s.seed: s for s in specs}.values():
            clients = load_splits(spec.data, spec.seed).clients
            sizes.setdefault(part, []).extend(len(c) for c in clients)
    assert set(sizes["iid"]) == {400}
    text = " ".join(section(DOC, "## Settings", "## The questions").split())
    for part, alpha in (("dirichlet-0.5", "0.5"), ("dirichlet-0.3", "0.3")):
        low, high = min(sizes[part]), max(sizes[part])
        assert f"Dirichlet({alpha}) the clients hold {low} to {high:,}" in text or \
            f"Dirichlet({alpha}) {low} to {high:,}" in text, (part, low, high)


README = (ROOT / "README.md").read_text()
DEMO = (ROOT / "docs" / "demo.md").read_text()
RESULTS_DOC = (ROOT / "docs" / "results.md").read_text()
COMPARED = ("demo", "quick3")
"""`fedticket compare --json` of the demo's runs and of the 3-seed quick runs (the
commands are beside their tables in docs/demo.md)."""


@pytest.mark.parametrize("name", COMPARED)
def test_the_demo_tables_are_compare_of_the_committed_runs(name):
    from fedticket.report import to_markdown

    result = json.loads((RESULTS / f"{name}.json").read_text())
    block = section(DEMO, f"<!-- BEGIN {name}.json -->\n", f"<!-- END {name}.json -->")
    assert block.removeprefix(f"<!-- BEGIN {name}.json -->\n") == to_markdown(result) + "\n"
    assert all(c != "?" for c in result["provenance"]["runs"].values())


MAIN = ["study", "sweep-sparsity", "sweep-sparsity-skewed", "sweep-init", "sweep-stateless",
        "sweep-pool", "sweep-noise"]
GRID_SETTINGS = ["50", "3", "30", "80", "0.5", "0.3", "35", "0.70", "0.80", "25", "95", "2",
                 "20,000", "1k", "1,438"]
BITS_SETTINGS = ["100", "10", "0.5", "0.80", "95", "90", "80", "4", "8", "3", "0.3"]
RESNET_SETTINGS = ["98", "3", "0.70", "0.80", "0.3", "8"]
PEERS_SETTINGS = ["0.80", "0.3", "95", "0"]


def test_the_results_in_prose_quote_the_committed_summaries():
    # the README's former results bullets, now in docs/results.md
    text = section(RESULTS_DOC, "## The main grid", "Regenerate the main grid")
    resnet = section(text, "- **On a residual network", "- **What carries it**")
    bits = text[text.index("- **Bytes at their limit"):]
    text = text.replace(resnet, "").replace(bits, "")
    assert unquoted(text, [summary(s) for s in MAIN], GRID_SETTINGS) == []
    assert unquoted(bits, [summary("bits")], BITS_SETTINGS) == []
    assert unquoted(resnet, [summary("study-resnet")], RESNET_SETTINGS) == []


def test_the_readmes_results_table_quotes_the_committed_summaries():
    """Each row of the README's headline table is checked against the summary it comes
    from (the peer grid, the bits sweep, the resnet8 study; the rest: the main grid and
    its sweeps), and so is the prose around it."""
    text = section(README, "## Results", "Regenerate the main grid")
    sources = {"| peer grid:": "peers", "| bits sweep:": "bits", "| `resnet8`": "study-resnet",
               "| `": "main"}  # the first prefix that matches decides
    rows: dict[str, list[str]] = {s: [] for s in sources.values()}
    prose: list[str] = []
    for line in text.splitlines():
        source = next((s for p, s in sources.items() if line.startswith(p)), None)
        (rows[source] if source else prose).append(line)
    assert all(rows.values()) and len(rows["main"]) == 3, rows
    main = "\n".join(prose + rows["main"])
    assert unquoted(main, [summary(s) for s in MAIN], GRID_SETTINGS) == []
    assert unquoted("\n".join(rows["bits"]), [summary("bits")], BITS_SETTINGS) == []
    assert unquoted("\n".join(rows["study-resnet"]), [summary("study-resnet")],
                    RESNET_SETTINGS) == []
    assert unquoted("\n".join(rows["peers"]), [summary("peers")], PEERS_SETTINGS) == []


def test_the_readmes_results_table_says_the_verdicts_of_the_committed_summaries():
    """The words of the table: Q1 against `fedavg` (yes under IID, inconclusive under
    skew to 0.80; yes everywhere to 0.70) and against `fedavg-dae` (no), and Q3 of the
    bits sweep (inconclusive under both partitions, CPU time binding). The peers' yes is
    checked in tests/test_study.py, and so is resnet8's "no pruned method reaches 0.80"."""
    from fedticket.study import deciding, q3_rows, questions_of, verdict

    results, q = summary("study")["results"], questions_of(summary("study"))
    words = {p: verdict(results[p]["0.80"], q) for p in ("iid", "dirichlet-0.5", "dirichlet-0.3")}
    assert [w["fedavg"]["answer"] for w in words.values()] == ["yes", "inconclusive",
                                                               "inconclusive"]
    assert all(w["fedavg-dae"]["answer"] == "no" for w in words.values())
    assert all(verdict(results[p]["0.70"], q)["fedavg"]["answer"] == "yes" for p in words)
    row = next(line for line in README.splitlines() if line.startswith("| `dae-ticket` vs"))
    assert "**yes** under IID, **inconclusive** under skew (to 0.70: **yes** everywhere)" in row
    bits, q3 = summary("bits")["results"], questions_of(summary("bits"))
    for part in ("iid", "dirichlet-0.3"):
        best = deciding(q3_rows(bits[part], q3))
        assert best is not None and best["overall"] == "inconclusive", part
        assert best["method"] == "dae-ticket-fast" and best["variant"].startswith("95% q4"), \
            (part, best["variant"])
        assert "CPU time" in best["binds"], (part, best["binds"])


def test_the_verdict_of_the_main_grid_quotes_its_summary():
    text = section(DOC, "**Verdict of the main grid**", "**Timing, before and after.**")
    assert unquoted(text, [summary(s) for s in MAIN], GRID_SETTINGS) == []
    # "the random and magnitude controls never reach 0.80 under skewed data"
    s = summary("study")
    for part in ("dirichlet-0.5", "dirichlet-0.3"):
        for control in ("random-ticket", "magnitude-init"):
            assert s["results"][part]["0.80"]["methods"][control]["rounds_to_target"]["n"] == 0


def test_the_reading_of_the_demo_quotes_its_runs():
    def wrapped(name):  # a compare result, shaped as a study summary for quotable()
        return {"results": {name: {"t": json.loads((RESULTS / f"{name}.json").read_text())}}}

    text = DEMO[DEMO.index("How to read it:"):]
    assert unquoted(text, [wrapped(n) for n in ("demo", "quick3", "quick3-target-0.6")],
                    ["80", "15", "0.6", "3"]) == []


def test_the_readme_is_a_front_door():
    assert len(README) <= 12_000, len(README)
    headings = [line for line in README.splitlines() if line.startswith("## ")]
    assert headings == ["## Two commands", "## Quickstart", "## Results", "## Methods",
                        "## Documentation"]


def test_the_readmes_methods_table_names_every_preset():
    from fedticket.spec import METHODS

    table = section(README, "| name | what it is |", "\n\n")
    named = set()
    for line in table.splitlines()[2:]:
        named.update(re.findall(r"`([a-z0-9.-]+)`", line.split("|")[1]))
    assert named == set(METHODS)


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_docs_index_names_every_file_and_every_link_resolves_inside_the_repo():
    docs = ROOT / "docs"
    index = (docs / "README.md").read_text()
    files = [p for p in docs.rglob("*") if p.is_file()]
    assert [p for p in files if f"]({p.relative_to(docs).as_posix()})" not in index] == []
    for page in [ROOT / "README.md", *docs.glob("*.md")]:
        text = page.read_text()
        for target in LINK.findall(text):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), (page.name, target)


def test_the_payload_table_in_the_bits_doc_is_the_committed_benchmark_result():
    import importlib.util

    path = ROOT / "benchmarks" / "payload_bytes.py"
    spec = importlib.util.spec_from_file_location("payload_bytes", path)
    assert spec is not None and spec.loader is not None
    import sys

    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    results = json.loads((ROOT / "benchmarks" / "results" / "payload_bytes.json").read_text())
    doc = (ROOT / "docs" / "BITS.md").read_text()
    block = section(doc, "<!-- BEGIN payload_bytes -->\n", "<!-- END payload_bytes -->")
    assert block == "<!-- BEGIN payload_bytes -->\n" + module.render(results)
    assert results["targets"]["p3_mask_bits_over_entropy"] <= 1.03


def test_the_bits_verdict_quotes_its_summary():
    doc = (ROOT / "docs" / "BITS.md").read_text()
    end = doc.index("<!-- BEGIN bits.json -->")
    text = doc[doc.rindex("**Verdict.**", 0, end): end]
    # the settings: sparsities, bars, target, partitions, value codes, seeds
    settings = ["80", "90", "95", "100", "10", "0.5", "0.80", "0.3", "8", "4", "3", "32",
                "16"]
    assert unquoted(text, [summary("bits")], settings) == []
