"""The experiment's evidence reads each comparison table as one family of tests: Holm-adjusted p-values per
comparison, and a count of nominal hits against what chance gives, so a reader of 40 comparisons is not
misled by the two that pass p < 0.05 by luck."""

from __future__ import annotations

import pytest

from molma.experiment import adjust_family, evidence_markdown


def _comparison(n_win: int, n_loss: int, sign_p: float) -> dict:
    n = n_win + n_loss
    return {"win": n_win / n, "tie": 0.0, "loss": n_loss / n, "n": n, "n_win": n_win, "n_tie": 0,
            "n_loss": n_loss, "win_excl_ties": n_win / n, "excl_ci_low": 0.4, "excl_ci_high": 0.6,
            "sign_p": sign_p, "mean_diff": 0.1, "diff_ci_low": -0.1, "diff_ci_high": 0.3, "n_identical_ties": 0}


def _facts() -> dict:
    return {"n_prompts": 100, "objectives": ["help", "safe"],
            "models": {"ref": {"algo": "reference", "seed": None, "kl": 0.0, "help/mean": 0.0, "safe/mean": 0.0},
                       "molma": {"algo": "molma", "seed": 0, "kl": 1.0, "help/mean": 0.1, "safe/mean": 0.2}},
            "vs_reference": {"molma": {"help": _comparison(70, 30, 0.0001), "safe": _comparison(56, 44, 0.04)},
                             "a": {"help": _comparison(40, 60, 0.03), "safe": _comparison(50, 50, 1.0)}},
            "molma_vs": {"ref": {"help": _comparison(70, 30, 0.0001), "safe": _comparison(56, 44, 0.04)}}}


def test_adjust_family_counts_nominal_hits_and_holm_survivors():
    facts = _facts()
    summary = adjust_family(facts["vs_reference"], facts["objectives"])
    # 4 tests; sorted p 0.0001, 0.03, 0.04, 1.0 -> Holm 0.0004, 0.09, 0.09, 1.0
    assert summary["n_tests"] == 4 and summary["expected_by_chance"] == pytest.approx(0.2)
    assert summary["nominal"] == [["molma", "help", "gain"], ["molma", "safe", "gain"], ["a", "help", "loss"]]
    assert summary["holm"] == [["molma", "help", "gain"]]
    assert facts["vs_reference"]["molma"]["help"]["holm_p"] == pytest.approx(0.0004)
    assert facts["vs_reference"]["a"]["help"]["holm_p"] == pytest.approx(0.09)
    assert facts["vs_reference"]["a"]["safe"]["holm_p"] == pytest.approx(1.0)


def test_evidence_markdown_shows_holm_column_and_family_sentence():
    facts = _facts()
    facts["multiplicity"] = {f: adjust_family(facts[f], facts["objectives"]) for f in ("vs_reference", "molma_vs")}
    md = evidence_markdown(facts)
    assert "| sign p | Holm p |" in md
    assert "| molma | safe | 56.0 | 0.0 | 44.0 | 56.0 [40.0, 60.0] | 0.040 | 0.090 |" in md
    assert ("4 sign tests in this table; 3 reach p < 0.05 on their own (2 better than the reference, 1 worse), "
            "about 0.2 expected by chance") in md
    assert "family-wise error 0.05): molma on help (better than the reference)." in md
    # the second table is its own family: 2 tests, Holm 0.0002 and 0.04
    assert "(family-wise error 0.05): ref on help (MOLMA better), ref on safe (MOLMA better)." in md
