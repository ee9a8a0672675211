import math
import warnings

import numpy as np
import pytest

from designspace.errors import DesignSpaceError
from designspace.metrics import compute_metrics, main_score

GOLD = [1, 1, 1, 0, 0, 0, 1, 0]
PRED = [1, 1, 0, 0, 0, 1, 1, 0]
# Confusion: tp=3 (idx 0,1,6), fn=1 (idx 2), fp=1 (idx 5), tn=3 (idx 3,4,7).
# accuracy = 6/8 = 0.75; f1 = 2*3 / (2*3 + 1 + 1) = 0.75
# mcc = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (9 - 1) / sqrt(4*4*4*4) = 8/16 = 0.5


def test_binary_metrics_hand_checked():
    m = compute_metrics("mrpc", PRED, GOLD)
    assert set(m) == {"f1", "accuracy"}
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert compute_metrics("CoLA", PRED, GOLD)["mcc"] == pytest.approx(0.5)
    assert main_score("mrpc", m) == pytest.approx(0.75)


def test_mcc_asymmetric_confusion():
    # tp=2, fn=2, fp=0, tn=4: mcc = (2*4 - 0*2) / sqrt(2*4*6*4) = 8 / sqrt(192) = 0.57735
    gold = [1, 1, 1, 1, 0, 0, 0, 0]
    pred = [1, 1, 0, 0, 0, 0, 0, 0]
    assert compute_metrics("cola", pred, gold)["mcc"] == pytest.approx(8 / math.sqrt(192))
    # Perfectly wrong predictions give -1.
    assert compute_metrics("cola", [1 - g for g in gold], gold)["mcc"] == pytest.approx(-1.0)


def test_mnli_three_class_mcc_matches_formula():
    # Gorodkin's multi-class MCC: c=3 correct of s=5; t=(2,2,1), p=(2,1,2); t.p = 4+2+2 = 8
    # (3*5 - 8) / sqrt((25 - 9) * (25 - 9)) = 7/16
    gold = [0, 0, 1, 1, 2]
    pred = [0, 2, 1, 0, 2]
    from designspace.metrics import mcc

    assert mcc(np.array(pred), np.array(gold)) == pytest.approx(7 / 16)
    assert compute_metrics("mnli", pred, gold) == {"accuracy": pytest.approx(0.6)}


def test_logits_are_argmaxed():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])  # argmax -> 1, 0, 1
    assert compute_metrics("sst2", logits, [1, 0, 0])["accuracy"] == pytest.approx(2 / 3)


def test_constant_predictions_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics("cola", [1, 1, 1, 1], [1, 0, 1, 0])["mcc"] == 0.0
        m = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 3.0, 5.0])
        assert m == {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics("stsb", [np.nan, 1.0, 2.0], [1.0, 3.0, 5.0])["pearson"] == 0.0
    # No positive class anywhere: f1 is defined as 0, not an error.
    assert compute_metrics("mrpc", [0, 0], [0, 0])["f1"] == 0.0


def test_stsb_correlations():
    # Monotone but not linear: spearman 1, pearson < 1.
    gold = [0.0, 1.0, 2.0, 3.0]
    pred = np.array([[0.0], [1.0], [4.0], [9.0]])  # (n, 1) regression head output is squeezed
    m = compute_metrics("STS-B", pred, gold)
    assert m["spearman"] == pytest.approx(1.0)
    # x=0..3, y=x^2: sum(dx*dy)=15, sum(dx^2)=5, sum(dy^2)=49 -> r = 15 / (7*sqrt(5)) = 0.958315
    assert m["pearson"] == pytest.approx(0.958315, abs=1e-6)
    assert main_score("stsb", m) == m["pearson"]


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(DesignSpaceError, match="3 predictions for 2 labels"):
        compute_metrics("rte", [0, 1, 0], [0, 1])
    with pytest.raises(DesignSpaceError, match="non-integer"):
        compute_metrics("rte", [0.2, 0.9], [0, 1])
    with pytest.raises(DesignSpaceError, match="predictions.shape"):
        compute_metrics("mnli", np.zeros((2, 2)), [0, 1])
    with pytest.raises(DesignSpaceError, match="'mcc'"):
        main_score("cola", {"accuracy": 0.5})
