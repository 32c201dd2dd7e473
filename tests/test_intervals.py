"""Paired savings over seeds, their 95% intervals and the three-word verdicts, by hand."""

import math

import pytest

from fedticket.report.intervals import (
    against,
    all_of,
    any_of,
    factor,
    paired_difference,
    paired_saving,
    seeds_to_settle,
    t_quantile,
)


def test_t_quantiles_are_students():
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(9) == pytest.approx(2.262157, abs=1e-6)


def test_a_saving_pairs_the_seeds_and_works_on_the_log_ratios():
    # ratios 0.5, 0.6, 0.8: logs -0.6931, -0.5108, -0.2231; mean -0.4757, sd 0.2370;
    # half-width 4.3027 * 0.2370 / sqrt(3) = 0.5887
    s = paired_saving({"0": 50.0, "1": 60.0, "2": 80.0}, {"0": 100.0, "1": 100.0, "2": 100.0})
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(100 * (1 - (0.5 * 0.6 * 0.8) ** (1 / 3)))  # 37.86
    assert s["lo"] == pytest.approx(100 * (1 - math.exp(-0.4757 + 0.5887)), abs=0.05)  # -11.96
    assert s["hi"] == pytest.approx(100 * (1 - math.exp(-0.4757 - 0.5887)), abs=0.05)  # 65.51
    # the order of the seeds in the dicts does not matter; the pairing does
    swapped = paired_saving({"2": 80.0, "0": 50.0, "1": 60.0}, {"1": 100.0, "0": 100.0, "2": 100.0})
    assert swapped == s
    hundred = {"0": 100.0, "1": 100.0, "2": 100.0}
    unpaired = paired_saving({"0": 80.0, "1": 60.0, "2": 50.0}, hundred)
    assert unpaired["mean"] == pytest.approx(s["mean"])  # same ratios, other seeds
    # a baseline that costs twice as much on one seed: pairing sees it, a mean of means not
    paired = paired_saving({"0": 50.0, "1": 100.0, "2": 50.0}, {"0": 100.0, "1": 200.0, "2": 100.0})
    assert paired["mean"] == pytest.approx(50.0) and paired["lo"] == paired["hi"] == \
        pytest.approx(50.0)


def test_no_interval_below_three_seeds_and_no_saving_when_a_seed_missed():
    two = paired_saving({"0": 50.0, "1": 60.0}, {"0": 100.0, "1": 100.0})
    assert two == {"mean": pytest.approx(100 * (1 - math.sqrt(0.3))), "lo": None, "hi": None,
                   "n": 2}
    missed = paired_saving({"0": 50.0, "1": None, "2": 60.0}, {"0": 100.0, "1": 100.0, "2": 100.0})
    assert missed["mean"] is None and missed["n"] == 3
    assert paired_saving({"0": 1.0}, {"0": 0.0})["mean"] is None  # a zero baseline
    assert paired_saving({"0": 1.0}, {"1": 1.0}) == {"mean": None, "lo": None, "hi": None, "n": 0}


def test_an_accuracy_difference_is_on_its_own_scale():
    d = paired_difference({"0": 0.80, "1": 0.81, "2": 0.85}, {"0": 0.82, "1": 0.82, "2": 0.83})
    # differences -0.02, -0.01, 0.02: mean -0.00333, sd 0.02082, half 4.3027 * 0.02082 / sqrt(3)
    assert d["mean"] == pytest.approx(-0.01 / 3)
    half = 4.302653 * math.sqrt((0.0166667**2 + 0.0066667**2 + 0.0233333**2) / 2) / math.sqrt(3)
    assert (d["lo"], d["hi"]) == (pytest.approx(-0.01 / 3 - half, abs=1e-6),
                                  pytest.approx(-0.01 / 3 + half, abs=1e-6))


def test_verdict_words():
    assert against({"mean": 50, "lo": 40, "hi": 60}, 35) == "yes"
    assert against({"mean": 20, "lo": 10, "hi": 30}, 35) == "no"
    assert against({"mean": 40, "lo": 30, "hi": 50}, 35) == "inconclusive"
    assert against({"mean": 40, "lo": None, "hi": None}, 35) == "inconclusive"
    assert all_of(["yes", "yes"]) == "yes" and all_of(["yes", "no", "inconclusive"]) == "no"
    assert all_of(["yes", "inconclusive"]) == "inconclusive"
    assert any_of(["no", "yes"]) == "yes" and any_of(["no", "no"]) == "no"
    assert any_of(["no", "inconclusive"]) == "inconclusive" and any_of([]) == "inconclusive"
    assert factor(80.0) == pytest.approx(5.0) and factor(None) is None and factor(100.0) is None


def test_seeds_to_settle_an_inconclusive_saving():
    # ratios 0.5, 0.6, 0.7 against a 35% bar: mean saving 40.6%, interval [9.7, 60.9]
    s = paired_saving({"0": 5.0, "1": 6.0, "2": 7.0}, {"0": 10.0, "1": 10.0, "2": 10.0})
    assert against(s, 35.0) == "inconclusive"
    n = seeds_to_settle(s, 35.0)
    # with the same mean (log -0.5202) and sd (0.1684), the half-width t(n-1) * 0.1684 /
    # sqrt(n) must fall below |log(0.65) + 0.5202| = 0.0894: first at n = 17
    assert n == 17
    sd = 0.16843
    assert t_quantile(n - 1) * sd / math.sqrt(n) < 0.0894
    assert t_quantile(n - 2) * sd / math.sqrt(n - 1) > 0.0894
    assert seeds_to_settle({"mean": 40.0, "lo": None, "hi": None, "n": 2}, 35.0) is None
