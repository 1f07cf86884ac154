"""Curve scores of Sec. 4.3 / App. A.4 / Alg. 1 of 000_* (Suetake et al.), every expected number worked out by hand."""

import math

import pytest

from synopt.compare import scores
from synopt.compare.scores import auc, curve_scores, format_score_table, mutual_information, score_table, spearman

LAMBDAS = [2.0 ** k for k in range(14)]  # the paper's λ' grid 1 … 8192 (App. A.3)


# ------------------------------------------------------------------------------------------------------------- AUC
def test_auc_three_points_by_trapezoids():
    # Points (0.2, .80), (0.5, .90), (0.8, .95), given out of order. Alg. 1 curve:
    # (0.2, 0) -> (0.2, .80) -> (0.5, .90) -> (0.8, .95) -> (1, .95)     [prepend (x1, 0), append (1, max y)]
    # P = 70, P' = .7: [0.2, 0.5]: 0.3 * ((.80+.90)/2 - .7) = 0.3 * .15  = 0.045
    #                  [0.5, 0.8]: 0.3 * ((.90+.95)/2 - .7) = 0.3 * .225 = 0.0675
    #                  [0.8, 1.0]: 0.2 * (.95 - .7)                      = 0.05
    # A(70) = 0.1625, AUC(70) = 0.1625 / 0.3 = 0.541666...
    x, y = [0.8, 0.2, 0.5], [0.95, 0.80, 0.90]
    assert auc(x, y, 70) == pytest.approx(0.1625 / 0.3)
    # P = 50: 0.3 * .35 + 0.3 * .425 + 0.2 * .45 = 0.105 + 0.1275 + 0.09 = 0.3225 -> / 0.5 = 0.645
    assert auc(x, y, 50) == pytest.approx(0.645)


def test_auc_non_monotone_curve_uses_the_envelope():
    # (0.1, .60), (0.3, .90), (0.5, .75), (0.7, .95): (0.5, .75) lies below the earlier .90 and is dropped.
    # Envelope: (0.1, 0) (0.1, .6) (0.3, .9) (0.7, .95) (1, .95). P' = .5:
    # [0.1, 0.3]: 0.2 * (.75 - .5) = 0.05; [0.3, 0.7]: 0.4 * (.925 - .5) = 0.17; [0.7, 1]: 0.3 * .45 = 0.135
    # A = 0.355 -> AUC(50) = 0.71. (A trapezoid through the dip would give 0.32 / 0.5 = 0.64: the envelope
    # overestimates non-monotone curves, as App. A.4 says.)
    assert auc([0.1, 0.3, 0.5, 0.7], [0.60, 0.90, 0.75, 0.95], 50) == pytest.approx(0.71)


def test_auc_cutoff_crossing_literal_vs_dropped():
    # (0.1, .40), (0.3, .90). Literal Alg. 1 (P' = .7): curve (0.1, 0) (0.1, .4) (0.3, .9) (1, .9).
    # Segment [0.1, 0.3] crosses .7 at t = (.7-.4)/(.9-.4) = 0.6, x = 0.22: triangle 0.5 * 0.08 * 0.2 = 0.008;
    # [0.3, 1]: 0.7 * 0.2 = 0.14. A = 0.148 -> 0.148 / 0.3 = 0.49333...
    assert auc([0.1, 0.3], [0.4, 0.9], 70) == pytest.approx(0.148 / 0.3)
    # Dropping (0.1, .4) first: curve (0.3, 0) (0.3, .9) (1, .9): A = 0.14 -> 0.4666...; the difference is the
    # crossing triangle only.
    assert auc([0.1, 0.3], [0.4, 0.9], 70, drop_below_cutoff=True) == pytest.approx(0.14 / 0.3)
    # P = 50: crossing at t = 0.2, x = 0.14: triangle 0.5 * 0.16 * 0.4 = 0.032; [0.3, 1]: 0.7 * 0.4 = 0.28.
    # A = 0.312 -> 0.624: the same data score higher with the lower cutoff.
    assert auc([0.1, 0.3], [0.4, 0.9], 50) == pytest.approx(0.624)


def test_auc_no_difference_when_first_point_is_above_cutoff():
    # The only point below .7 comes after the rise; it is dropped by the envelope anyway: both variants agree.
    # Curve (0.2, 0) (0.2, .9) (1, .9): A = 0.8 * 0.2 = 0.16 -> 0.5333...
    x, y = [0.2, 0.6], [0.9, 0.5]
    assert auc(x, y, 70) == pytest.approx(0.16 / 0.3)
    assert auc(x, y, 70, drop_below_cutoff=True) == pytest.approx(0.16 / 0.3)


def test_auc_points_beyond_baseline_are_dropped():
    # (1.5, .99) is dropped (x > 1) and does not set max y: curve (0.5, 0) (0.5, .9) (1, .9).
    # P' = .7: 0.5 * 0.2 = 0.1 -> 0.3333...
    assert auc([0.5, 1.5], [0.9, 0.99], 70) == pytest.approx(0.1 / 0.3)
    # x = 1 exactly is kept: (0.5, .8) (1, .9): 0.5 * (.85 - .7) = 0.075 -> 0.25
    assert auc([0.5, 1.0], [0.8, 0.9], 70) == pytest.approx(0.25)
    # No model cheaper than the baseline: no curve, no area.
    assert auc([1.2, 3.0], [0.9, 0.95], 70) == 0.0


def test_auc_extremes_and_ties():
    assert auc([0.0], [1.0], 70) == pytest.approx(1.0)  # (0, 1) to (1, 1): the whole box
    assert auc([0.1, 0.4], [0.6, 0.65], 70) == 0.0  # nothing above the cutoff
    # Equal x: a vertical step, whatever the order: as the single point (0.5, .9): 0.5 * 0.4 / 0.5 = 0.4
    assert auc([0.5, 0.5], [0.7, 0.9], 50) == pytest.approx(0.4)
    assert auc([0.5, 0.5], [0.9, 0.7], 50) == pytest.approx(0.4)


@pytest.mark.parametrize("energy, accuracy, P, message", [
    ([], [], 70, "empty"),
    ([0.5, math.nan], [0.9, 0.8], 70, "NaN"),
    ([0.5, 0.6], [0.9, math.nan], 70, "NaN"),
    ([0.5, math.inf], [0.9, 0.8], 70, "infinite"),
    ([0.5, 0.6], [90.0, 80.0], 70, "percent"),
    ([-0.1], [0.9], 70, ">= 0"),
    ([0.5, 0.6], [0.9], 70, "same length"),
    ([0.5], [0.9], 100, "0 <= P < 100"),
    ([0.5], [0.9], -1, "0 <= P < 100"),
])
def test_auc_rejects_bad_input(energy, accuracy, P, message):
    with pytest.raises(ValueError, match=message):
        auc(energy, accuracy, P)


# -------------------------------------------------------------------------------------------------------- Spearman
def test_spearman_perfect_controller_scores_plus_one():
    energy = [0.9, 0.5, 0.3, 0.1]  # falls as λ' grows
    acc = [0.9] * 4
    assert spearman([1, 2, 4, 8], energy, acc, 70) == pytest.approx(1.0)  # −ρ = −(−1)
    # A budget (SynOp target, ρ) that the energy follows: +ρ
    assert spearman([1, 2, 4, 8], energy[::-1], acc, 70, direction="increasing") == pytest.approx(1.0)
    assert spearman([1, 2, 4, 8], energy, acc, 70, direction="increasing") == pytest.approx(-1.0)


def test_spearman_cutoff_and_ties_by_hand():
    lam, energy, acc = [1, 2, 4, 8, 16], [0.9, 0.5, 0.3, 0.1, 0.5], [0.9, 0.9, 0.9, 0.9, 0.3]
    # P = 50 removes the broken model (λ' = 16, acc .3): a perfect controller again.
    assert spearman(lam, energy, acc, 50) == pytest.approx(1.0)
    # P = 0 keeps it. Ranks: λ' 1..5; energy [5, 3.5, 2, 1, 3.5] (the two .5 share 3.5). Centred:
    # [-2, -1, 0, 1, 2] and [2, .5, -1, -2, .5]; Σ products = -4 - .5 + 0 - 2 + 1 = -5.5; Σ squares 10 and 9.5.
    # ρ = -5.5 / sqrt(95) = -0.56429 -> reported +0.56429
    assert spearman(lam, energy, acc, 0) == pytest.approx(5.5 / math.sqrt(95))


def test_spearman_reproduces_table_22_numbers():
    # Table 22 (000_*): Ω_syn p=1 has Spearman(70) 0.9879 with MI(70) 2.303 = ln 10, Spearman(50) 0.9930 with
    # MI(50) 2.485 = ln 12. One adjacent swap among n points: 1 − 6·2 / (n(n²−1)):
    # n = 10: 1 − 12/990 = 0.98788; n = 12: 1 − 12/1716 = 0.99301.
    for n, rho, mi in [(10, 0.9879, 2.303), (12, 0.9930, 2.485)]:
        lam = LAMBDAS[:n]
        energy = [1.0 / (k + 2) for k in range(n)]
        energy[3], energy[4] = energy[4], energy[3]
        acc = [0.9] * n
        assert spearman(lam, energy, acc, 70) == pytest.approx(rho, abs=5e-5)
        assert mutual_information(lam, energy, acc, 70, estimator="plugin") == pytest.approx(mi, abs=5e-4)


def test_spearman_degenerate_is_nan():
    assert math.isnan(spearman([1], [0.5], [0.9], 70))
    assert math.isnan(spearman([1, 2, 4], [0.5, 0.4, 0.3], [0.9, 0.6, 0.6], 70))  # one point above 70 %
    assert math.isnan(spearman([1, 2, 4], [0.5, 0.5, 0.5], [0.9] * 3, 70))  # constant energy
    assert math.isnan(spearman([2, 2, 2], [0.5, 0.4, 0.3], [0.9] * 3, 70))  # constant intensity
    with pytest.raises(ValueError, match="direction"):
        spearman([1, 2], [0.5, 0.4], [0.9, 0.9], 70, direction="down")
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, math.nan], [0.5, 0.4], [0.9, 0.9], 70)


# -------------------------------------------------------------------------------------------------------------- MI
MONOTONE = [1.0 / (1.0 + 0.1 * lam) for lam in LAMBDAS]
# the same 14 energies in an order unrelated to λ' (a fixed hand-made shuffle)
SHUFFLED = [MONOTONE[i] for i in (7, 2, 11, 0, 13, 5, 9, 3, 12, 1, 8, 6, 10, 4)]


def test_mi_orders_dependent_above_independent():
    acc = [0.9] * 14
    dependent = mutual_information(LAMBDAS, MONOTONE, acc, 70)
    independent = mutual_information(LAMBDAS, SHUFFLED, acc, 70)
    assert dependent > 1.0  # nats; KSG (k = 3) of a perfectly monotone 14-point set: ψ-terms give ≈ 1.2
    assert independent < 0.5
    assert dependent > independent + 0.7
    # deterministic, and rank based: λ' and log2 λ' give the same value
    assert mutual_information(LAMBDAS, MONOTONE, acc, 70) == dependent
    assert mutual_information(list(range(14)), MONOTONE, acc, 70) == pytest.approx(dependent)


def test_mi_plugin_is_the_entropy_of_the_sample():
    # λ' distinct, energies [.1, .2, .2, .3]: I = H(energy) = 2·(¼ ln 4) + ½ ln 2 = 1.5 ln 2 = 1.0397 nats
    assert mutual_information([1, 2, 4, 8], [0.1, 0.2, 0.2, 0.3], [0.9] * 4, 70, estimator="plugin") \
        == pytest.approx(1.5 * math.log(2))
    # it cannot tell a shuffled set from a monotone one: both ln 14
    acc = [0.9] * 14
    for energy in (MONOTONE, SHUFFLED):
        assert mutual_information(LAMBDAS, energy, acc, 70, estimator="plugin") == pytest.approx(math.log(14))


def test_mi_degenerate_cases():
    assert math.isnan(mutual_information([1, 2, 4], [0.5, 0.4, 0.3], [0.9] * 3, 70))  # 3 points <= k = 3
    assert math.isnan(mutual_information([1], [0.5], [0.9], 70, estimator="plugin"))
    assert mutual_information([1, 2, 4, 8, 16], [0.5] * 5, [0.9] * 5, 70) == 0.0
    with pytest.raises(ValueError, match="estimator"):
        mutual_information([1, 2], [0.5, 0.4], [0.9, 0.9], 70, estimator="histogram")


# -------------------------------------------------------------------------------------------------- curves, tables
def _row(label, seed, lam, energy, acc, **extra):
    return dict(label=label, seed=seed, intensity=lam, energy_rel=energy, accuracy=acc, status="ok", **extra)


def test_score_table_mean_and_std_over_seeds_by_hand():
    rows = [
        _row("A", 0, 1.0, 0.5, 0.9),  # AUC(70): (0.5, .9) to (1, .9): 0.5 * 0.2 / 0.3 = 0.33333
        _row("A", 1, 1.0, 0.2, 0.9),  # AUC(70): 0.8 * 0.2 / 0.3 = 0.53333
        dict(label="A", seed=2, intensity=2.0, energy_rel=None, accuracy=math.nan, status="failed"),
        dict(label="ANN", seed=0, intensity=None, energy_rel=None, accuracy=0.95, status="ok"),  # no energy
    ]
    table = score_table(rows, P_list=(70,))
    assert [e["label"] for e in table] == ["A"]  # the ANN row has no energy: skipped, its group omitted
    (a,) = table
    assert a["n_seeds"] == 2 and a["seeds"] == [0, 1]
    # mean (1/3 + 8/15) / 2 = 0.43333; sample std (ddof = 1) = |8/15 − 1/3| / √2 = 0.2 / √2 = 0.141421
    assert a["AUC(70)"] == pytest.approx(0.43333333)
    assert a["AUC(70)_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert a["AUC(70)_n"] == 2 and a["N(70)"] == 1
    assert math.isnan(a["Spearman(70)"]) and a["Spearman(70)_n"] == 0  # one point per seed
    text = format_score_table(table, (70,))
    assert text.splitlines()[0] == "| Method | AUC(70)[%] | Spearman(70) | MI(70) |"
    assert "| A | 43.33 ± 14.14 | n/a | n/a |" in text
    assert score_table(rows, P_list=(70,), ddof=0)[0]["AUC(70)_std"] == pytest.approx(0.1)  # population std


def _curves():
    """Hand-made Fig. 2 (A): "syn" is monotone (energy falls with λ', accuracy degrades slowly); "balance" saves less
    energy (√ of the same rates), in an order unrelated to λ', and pays more accuracy for it (acc = .45 + .5 E):
    a poor trade-off and a poor controller. Seeds differ by a 1 % energy offset."""
    rows = []
    for seed in range(3):
        for k, lam in enumerate(LAMBDAS):
            rows.append(_row("syn", seed, lam, MONOTONE[k] * (1 + 0.01 * seed), 0.92 - 0.02 * k))
            e = math.sqrt(SHUFFLED[k])
            rows.append(_row("balance", seed, lam, e * (1 + 0.01 * seed), 0.45 + 0.5 * e))
    return rows


def test_score_table_reproduces_the_structure_of_table_4():
    table = {e["label"]: e for e in score_table(_curves())}
    syn, bal = table["syn"], table["balance"]
    for m in scores.metric_names((70, 50)):
        assert syn[m] > bal[m], m
    # syn: accuracy .92 − .02k >= .70 for k <= 11 (12 points), >= .50 for all 14 -> monotone: Spearman 1 exactly
    assert syn["N(70)"] == 12 and syn["N(50)"] == 14
    assert syn["Spearman(70)"] == pytest.approx(1.0) and syn["Spearman(70)_std"] == pytest.approx(0.0)
    assert syn["MI(70)"] > 1.0
    assert bal["Spearman(50)"] < 0.5 and bal["MI(50)"] < 0.5
    text = format_score_table(list(table.values()))
    assert "| syn | " in text and text.count("\n") == 4


def test_pooled_seeds_and_plugin_scale():
    # Pooled, the plug-in MI of the syn curve is ln(#distinct λ' among the survivors): 3 seeds x 12 points share
    # 12 λ' values and have 36 distinct energies -> I = H(λ') = ln 12. (The paper's Table 4 values exceed ln 14, so
    # they cannot be I(λ'; energy) of pooled points: see docs/scores.md.)
    (syn,) = [e for e in score_table(_curves(), pool_seeds=True, mi_estimator="plugin") if e["label"] == "syn"]
    assert syn["MI(70)"] == pytest.approx(math.log(12))
    assert math.isnan(syn["MI(70)_std"]) and syn["n_curves"] == 1 and syn["n_seeds"] == 3
    assert "±" not in format_score_table([syn]).splitlines()[2]


def test_direction_from_intensity_name():
    # A conversion sweep over SynOp targets: energy rises with the target, a perfect budget -> +1 with "auto".
    rows = [_row("QReLU T=5", 0, t, e, 0.9, intensity_name="target_synops")
            for t, e in [(1e4, 0.2), (2e4, 0.4), (4e4, 0.7), (8e4, 1.3)]]
    (e,) = score_table(rows)
    assert e["Spearman(70)"] == pytest.approx(1.0)
    assert score_table(rows, direction="decreasing")[0]["Spearman(70)"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="unknown intensity_name"):
        score_table([dict(r, intensity_name="beta") for r in rows])


def test_curve_scores_and_table_errors_name_the_curve():
    out = curve_scores([_row("A", 0, 1.0, 0.5, 0.9), _row("A", 0, 2.0, 0.3, 0.8)], (70,))
    assert out["AUC(70)"] == pytest.approx(auc([0.5, 0.3], [0.9, 0.8], 70)) and out["n_points"] == 2
    with pytest.raises(ValueError, match=r"curve 'A', seed 0: .*percent"):
        score_table([_row("A", 0, 1.0, 0.5, 90.0)])
    with pytest.raises(ValueError, match="no 'label' key"):
        score_table([dict(seed=0, intensity=1.0, energy_rel=0.5, accuracy=0.9)])
    with pytest.raises(ValueError, match="no usable rows"):
        curve_scores([dict(status="failed")])
