"""The original study's claims checked from result frames: each verdict follows from
the numbers, and missing results give "cannot test" rather than an error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssdstudy import claims
from ssdstudy.seednoise import SeedNoise

BINS = ("0-5", "5-10", "10-20", "20-40", "40-60", "60-80", "80-100")


def row(backbone, width=1.0, augment="all", mining="3:1", mAP=0.5, ms=10.0, bins=None, **extra):
    r = {"run_id": f"{backbone}-{width}-{augment}-{mining}", "backbone": backbone, "width": width,
         "augment": augment, "mining": mining, "voc07_map": mAP, "prediction_ms": ms,
         "inference_ms": 0.8 * ms, "forward_ms": 0.8 * ms, "postprocess_ms": 0.2 * ms,
         "reference_prediction_ms": 2 * ms, "epoch_seconds": 60.0, "epochs": 10, "device_name": "Test CPU"}
    bins = bins or [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, np.nan]
    for b, v in zip(BINS, bins):
        r[f"bin {b}"] = v
        r[f"images {b}"] = 0 if np.isnan(v) else 5
    r.update(extra)
    return r


def frame(*rows):
    return pd.DataFrame(list(rows))


def test_claim_1_supported_refuted_and_untestable():
    v = claims.claim_backbone(frame(row("vgg16", mAP=0.7, ms=100), row("mobilenet_v1", mAP=0.6, ms=20)))
    assert v.status == "supported" and v.summary() == "2 hold"
    v = claims.claim_backbone(frame(row("vgg16", mAP=0.5, ms=100), row("mobilenet_v1", mAP=0.6, ms=20)))
    assert v.status == "mixed" and v.summary() == "1 holds, 1 fails"
    assert [c.holds for c in v.checks] == [False, True]
    v = claims.claim_backbone(frame(row("vgg16", mAP=0.5, ms=10), row("mobilenet_v1", mAP=0.6, ms=20)))
    assert v.status == "refuted"
    # only the no-augmentation runs: the baselines are missing
    v = claims.claim_backbone(frame(row("vgg16", augment="none"), row("mobilenet_v1", augment="none")))
    assert v.status == "cannot test" and v.summary() == "2 cannot be tested"
    assert claims.claim_backbone(pd.DataFrame()).status == "cannot test"


def test_claim_2_small_object_gain_and_epoch_time():
    small_gain = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1, np.nan]
    df = frame(
        row("vgg16", mAP=0.7, epoch_seconds=100, bins=list(np.add([0.1] * 7, small_gain))),
        row("vgg16", augment="none", mAP=0.5, epoch_seconds=80, bins=[0.1] * 6 + [np.nan]),
        row("mobilenet_v1", mAP=0.6, epoch_seconds=50, bins=[0.2] * 6 + [np.nan]),
        row("mobilenet_v1", augment="none", mAP=0.4, epoch_seconds=55, bins=[0.1, 0.1, 0.0, 0.0, 0.0, 0.0, np.nan]),
    )
    v = claims.claim_augmentation(df)
    holds = {c.statement: c.holds for c in v.checks}
    assert holds["augmentation raises VGG16's mAP"] is True
    assert holds["for VGG16 the gain is largest on small objects (under 10 % of the image)"] is True
    assert holds["for MobileNetV1 the gain is largest on small objects (under 10 % of the image)"] is False
    assert holds["an epoch of VGG16 takes less time without augmentation"] is True
    assert holds["an epoch of MobileNetV1 takes less time without augmentation"] is False
    assert v.status == "mixed"


def test_claim_2_bins_without_images_are_not_compared():
    no_small = [np.nan, np.nan, 0.3, 0.4, 0.5, 0.6, np.nan]
    df = frame(row("vgg16", bins=no_small), row("vgg16", augment="none", mAP=0.3, bins=no_small))
    check = next(c for c in claims.claim_augmentation(df).checks if "VGG16 the gain" in c.statement)
    assert check.holds is None


def test_claim_3_relative_loss_against_relative_saving():
    df = frame(row("mobilenet_v1", mAP=0.6, ms=30), row("mobilenet_v1", width=0.5, mAP=0.3, ms=25),
               row("mobilenet_v1", width=0.25, mAP=0.55, ms=10))
    v = claims.claim_width(df)
    assert [c.holds for c in v.checks] == [False, True]  # x0.25: -8 % mAP, -67 % time; x0.5: -50 %, -17 %
    assert "x0.25" in v.checks[0].statement and "-67%" in v.checks[0].detail
    assert v.status == "mixed"
    assert claims.claim_width(frame(row("mobilenet_v1", width=0.5))).checks[0].holds is None


def hw_row(device, name, backbone, inference, epoch=np.nan, threads=None, **extra):
    return {"machine": name, "device": device, "device_name": name, "threads": threads, "backbone": backbone,
            "width": 1.0, "inference_ms": inference, "prediction_ms": inference * 1.2,
            "reference_prediction_ms": inference * 3, "epoch_seconds": epoch, "source": "f.json", **extra}


def test_claim_4_per_device():
    hw = frame(hw_row("cpu", "Xeon", "vgg16", 400, threads=2), hw_row("cpu", "Xeon", "mobilenet_v1", 100, threads=2),
               hw_row("cuda", "Tesla T4", "vgg16", 9), hw_row("cuda", "Tesla T4", "mobilenet_v1", 10))
    v = claims.claim_gpu_cpu(hw)
    assert v.status == "supported" and len(v.checks) == 2
    assert v.checks[0].statement.startswith("on Xeon (2 threads)")
    cpu_only = claims.claim_gpu_cpu(hw.iloc[:2])
    # the CPU half holds; the GPU half is named as untested, never counted for the claim
    assert cpu_only.status == "supported" and cpu_only.checks[-1].outcome == "cannot test"
    assert cpu_only.summary() == "1 holds, 1 cannot be tested"
    assert cpu_only.scope == "not tested: on a GPU, VGG16-SSD's inference is faster"
    assert "supported**; not tested: on a GPU" in cpu_only.markdown()


def test_claim_5_reference_share():
    df = frame(row("vgg16", ms=100, forward_ms=80, reference_prediction_ms=120),
               row("mobilenet_v1", ms=20, forward_ms=10, reference_prediction_ms=40))
    v = claims.claim_nms(df)
    assert [c.holds for c in v.checks] == [False, True]  # 33 % and 75 % after the forward pass
    assert "75%" in v.checks[1].detail
    assert "vectorised" in v.note
    gpu = frame(hw_row("cuda", "H100", "vgg16", 5), hw_row("cpu", "Xeon", "vgg16", 50))
    v = claims.claim_nms(pd.DataFrame(), gpu)
    assert len(v.checks) == 1 and v.checks[0].holds is True and "H100" in v.checks[0].statement


def test_claim_6_mining():
    df = frame(row("vgg16", mAP=0.6, ms=100), row("vgg16", mining="none", mAP=0.5, ms=120),
               row("mobilenet_v1", mAP=0.65, ms=20), row("mobilenet_v1", mining="none", mAP=0.4, ms=30))
    v = claims.claim_mining(df)
    assert v.status == "supported" and len(v.checks) == 6
    df.loc[3, "prediction_ms"] = 10
    v = claims.claim_mining(df)
    assert v.status == "mixed"
    assert not next(c for c in v.checks if "MobileNetV1's prediction" in c.statement).holds


def test_claim_7_sizes():
    df = frame(
        row("vgg16", bins=[0.3, 0.4, 0.5, 0.5, 0.6, 0.6, np.nan]),
        row("mobilenet_v1", bins=[0.1, 0.2, 0.45, 0.5, 0.6, 0.6, np.nan]),
        row("vgg16", augment="none", bins=[0.1, 0.2, 0.3, 0.3, 0.4, 0.4, np.nan]),
        row("mobilenet_v1", augment="none", bins=[0.2, 0.1, 0.3, 0.3, 0.5, 0.5, np.nan]),
    )
    v = claims.claim_sizes(df)
    holds = [c.holds for c in v.checks]
    # smallest bin lowest: yes, yes, yes, no (5-10 is lower for MobileNet without augmentation)
    assert holds[:4] == [True, True, True, False]
    assert holds[4] is True  # VGG16 leads by 0.2 in 0-5 and 5-10
    assert holds[5] is True  # 0.5 against 0.4 on 40-80 %
    assert v.status == "mixed"


def test_claim_8_needs_the_named_gpus():
    hw = frame(hw_row("cuda", "Tesla P100", "vgg16", 1, epoch=100), hw_row("cuda", "Tesla T4", "vgg16", 1, epoch=150),
               hw_row("cuda", "Tesla P100", "mobilenet_v1", 1, epoch=40), hw_row("cuda", "Tesla T4", "mobilenet_v1", 1, epoch=50))
    v = claims.claim_training_devices(hw)
    assert [c.holds for c in v.checks] == [True, False]
    no_p100 = frame(hw_row("cuda", "H100", "vgg16", 1, epoch=10), hw_row("cuda", "A100", "vgg16", 1, epoch=12))
    v = claims.claim_training_devices(no_p100)
    assert v.status == "cannot test" and "fastest measured: H100" in v.checks[0].detail
    # a single GPU is trivially the fastest: no test
    v = claims.claim_training_devices(hw.iloc[[3]])
    assert v.checks[1].holds is None and "only one GPU" in v.checks[1].detail


def test_assess_all_and_table_on_no_results():
    verdicts = claims.assess_all({}, None)
    assert [v.number for v in verdicts] == list(range(1, 9))
    assert all(v.status == "cannot test" for v in verdicts)
    table = claims.verdict_table(verdicts)
    assert list(table.index) == list(range(1, 9)) and set(table["verdict"]) == {"cannot test"}
    md = verdicts[0].markdown()
    assert md.startswith("**Claim 1.**") and "*cannot test*" in md


def test_select_hardware_keeps_other_machines_and_own_runs():
    hw = frame(hw_row("cpu", "A", "vgg16", 1, source="a.json"), hw_row("cpu", "B", "vgg16", 1, source="default/r1"),
               hw_row("cpu", "B", "vgg16", 1, source="default/r2"))
    out = claims.select_hardware(hw, "default", ["r2"])
    assert list(out["source"]) == ["a.json", "default/r2"]


# --- the verdict table, row by row ------------------------------------------------------
HOLDS = claims.Check("a", True)
FAILS = claims.Check("b", False)
CLOSE = claims.Check("c", None, undecided=True)
UNTESTED = claims.Check("d", None)


def test_check_outcomes():
    assert [c.outcome for c in (HOLDS, FAILS, CLOSE, UNTESTED)] == ["holds", "fails", "too close to call", "cannot test"]


import pytest  # noqa: E402


@pytest.mark.parametrize(("checks", "status"), [
    ((), "cannot test"),
    ((UNTESTED, UNTESTED), "cannot test"),
    ((HOLDS, HOLDS), "supported"),
    ((HOLDS, UNTESTED), "supported"),          # with its untested part named
    ((FAILS, FAILS), "refuted"),
    ((FAILS, UNTESTED), "refuted"),
    ((HOLDS, FAILS), "mixed"),
    ((HOLDS, FAILS, CLOSE), "mixed"),
    ((HOLDS, CLOSE), "too close to call"),     # one held, nothing failed: not supported
    ((FAILS, CLOSE), "too close to call"),     # one failed, nothing held: not refuted
    ((CLOSE, UNTESTED), "too close to call"),
    ((FAILS, CLOSE, UNTESTED), "too close to call"),
])
def test_verdict_table_row(checks, status):
    verdict = claims.Verdict(1, tuple(checks))
    assert verdict.status == status
    assert status in dict(claims.VERDICT_TABLE)
    if status in ("supported", "refuted") and UNTESTED in checks:
        assert verdict.scope == "not tested: d"
    # one failed check and one too close to call never make a claim look partly true
    assert not (status == "mixed" and not any(c.outcome == "holds" for c in checks))


def test_a_model_that_did_not_learn_makes_a_comparison_untestable_never_a_tie():
    """Learned first: both runs near zero (as in the smoke study) cannot hold or fail."""
    tiny = dict(bins=[0.0, 0.0, 0.01, 0.02, 0.03, 0.05, np.nan])
    df = frame(row("vgg16", mAP=0.003, ms=100, **tiny), row("mobilenet_v1", mAP=0.02, ms=20, **tiny),
               row("vgg16", augment="none", mAP=0.003, **tiny), row("mobilenet_v1", augment="none", mAP=0.003, **tiny),
               row("mobilenet_v1", width=0.5, mAP=0.01, ms=15, **tiny))
    verdict = claims.claim_backbone(df)
    map_check = verdict.checks[0]
    assert map_check.outcome == "cannot test" and "did not learn" in map_check.detail
    # the timing half of the claim describes no trained detector either
    assert verdict.status == "cannot test" and verdict.scope == "the models compared did not learn"
    for verdict in (claims.claim_augmentation(df), claims.claim_width(df), claims.claim_sizes(df)):
        map_checks = [c for c in verdict.checks if "epoch" not in c.statement]
        assert all(c.outcome == "cannot test" for c in map_checks), verdict.markdown()
        assert verdict.status == "cannot test"
    mining = frame(row("vgg16", mAP=0.003), row("vgg16", mining="none", mAP=0.0),
                   row("mobilenet_v1", mAP=0.02), row("mobilenet_v1", mining="none", mAP=0.01))
    verdict = claims.claim_mining(mining)
    assert all(c.outcome == "cannot test" for c in verdict.checks if "prediction" not in c.statement)
    assert verdict.status == "cannot test"
    # one learned, one not: still untestable (a learned model beating a failed one says nothing)
    assert claims.claim_backbone(frame(row("vgg16", mAP=0.05), row("mobilenet_v1", mAP=0.6))).checks[0].outcome \
        == "cannot test"


def test_a_bin_the_models_did_not_learn_is_not_compared():
    """VGG16's lead on small objects when both score about zero there: cannot test."""
    df = frame(row("vgg16", mAP=0.6, bins=[0.02, 0.05, 0.5, 0.6, 0.7, 0.7, np.nan]),
               row("mobilenet_v1", mAP=0.5, bins=[0.0, 0.01, 0.4, 0.5, 0.6, 0.7, np.nan]))
    check = next(c for c in claims.claim_sizes(df).checks if "lead" in c.statement)
    assert check.outcome == "cannot test" and "small objects" in check.detail


def test_timing_checks_within_the_spread_are_too_close_to_call():
    df = frame(row("vgg16", mAP=0.7, ms=21, prediction_ms_iqr=3.0), row("mobilenet_v1", mAP=0.6, ms=20, prediction_ms_iqr=3.0))
    check = claims.claim_backbone(df).checks[1]
    assert check.outcome == "too close to call" and "spread" in check.detail
    df = frame(row("vgg16", mAP=0.7, ms=40, prediction_ms_iqr=3.0), row("mobilenet_v1", mAP=0.6, ms=20, prediction_ms_iqr=3.0))
    assert claims.claim_backbone(df).checks[1].outcome == "holds"
    hw = frame(hw_row("cpu", "Xeon", "vgg16", 101, threads=2, inference_ms_iqr=10.0),
               hw_row("cpu", "Xeon", "mobilenet_v1", 100, threads=2, inference_ms_iqr=10.0))
    assert claims.claim_gpu_cpu(hw).checks[0].outcome == "too close to call"
    # claim 3: a width whose time saving is within the spread
    df = frame(row("mobilenet_v1", mAP=0.6, ms=30, prediction_ms_iqr=4.0),
               row("mobilenet_v1", width=0.75, mAP=0.5, ms=29, prediction_ms_iqr=4.0))
    assert claims.claim_width(df).checks[0].outcome == "too close to call"


def test_verdicts_as_plain_data():
    verdict = claims.Verdict(4, (HOLDS, UNTESTED))
    data = verdict.to_dict()
    assert data["claim"] == 4 and data["status"] == "supported"
    assert data["checks"] == [{"statement": "a", "outcome": "holds", "detail": ""},
                              {"statement": "d", "outcome": "cannot test", "detail": ""}]


# --- timings measured on a busy machine ----------------------------------------------------
BUSY = {"busy": True, "busy_reason": "other processes kept 1.9 of 2 CPUs busy while 2 threads were timed"}


def test_a_timing_measured_on_a_busy_machine_cannot_be_tested():
    """Not "too close to call": a busy machine shifts a timing rather than widening its
    noise (275 ms against 14 ms once), so the check says nothing either way."""
    df = frame(row("vgg16", mAP=0.7, ms=10), row("mobilenet_v1", mAP=0.6, ms=275, **BUSY))
    verdict = claims.claim_backbone(df)
    check = verdict.checks[1]
    assert check.outcome == "cannot test" and "busy machine" in check.detail and "1.9 of 2 CPUs" in check.detail
    assert verdict.status == "supported" and verdict.scope.startswith("not tested: VGG16-SSD takes longer")
    # claim 4: one device's pair busy, the other quiet
    hw = frame(hw_row("cpu", "Xeon", "vgg16", 100, threads=2), hw_row("cpu", "Xeon", "mobilenet_v1", 400, threads=2, **BUSY),
               hw_row("cpu", "Xeon", "vgg16", 100, threads=1), hw_row("cpu", "Xeon", "mobilenet_v1", 20, threads=1))
    outcomes = {c.statement: c.outcome for c in claims.claim_gpu_cpu(hw).checks}
    assert outcomes["on Xeon (2 threads), MobileNetV1-SSD's inference is faster"] == "cannot test"
    assert outcomes["on Xeon (1 threads), MobileNetV1-SSD's inference is faster"] == "holds"
    # claim 3: a width timed on a busy machine
    df = frame(row("mobilenet_v1", mAP=0.6, ms=30), row("mobilenet_v1", width=0.5, mAP=0.3, ms=25, **BUSY))
    assert claims.claim_width(df).checks[0].outcome == "cannot test"
    # claim 5: the reference loop's share
    df = frame(row("vgg16", ms=100, forward_ms=80, reference_prediction_ms=400, **BUSY))
    assert claims.claim_nms(df).checks[0].outcome == "cannot test"
    # claim 6: prediction time with and without mining
    df = frame(row("vgg16", mAP=0.6, ms=100), row("vgg16", mining="none", mAP=0.5, ms=120, **BUSY))
    check = next(c for c in claims.claim_mining(df).checks if "VGG16's prediction" in c.statement)
    assert check.outcome == "cannot test"


def test_a_busy_flag_leaves_training_time_checks_alone():
    """Epoch times come from training histories, not from the flagged timing."""
    df = frame(row("vgg16", epoch_seconds=100, **BUSY), row("vgg16", augment="none", epoch_seconds=80, **BUSY))
    check = next(c for c in claims.claim_augmentation(df).checks if "epoch of VGG16" in c.statement)
    assert check.outcome == "holds"


def test_epoch_times_of_runs_trained_on_different_devices_are_not_compared():
    """A run trained on a lent GPU and its twin trained on the study's CPUs: their epoch
    times say which device is faster, not what augmentation costs."""
    df = frame(row("vgg16", epoch_seconds=12, trained_on="NVIDIA H200"),
               row("vgg16", augment="none", epoch_seconds=900, trained_on="AMD EPYC"))
    check = next(c for c in claims.claim_augmentation(df).checks if "epoch of VGG16" in c.statement)
    assert check.outcome == "cannot test"
    assert "trained on different devices (AMD EPYC and NVIDIA H200)" in check.detail
    df = frame(row("vgg16", epoch_seconds=12, trained_on="NVIDIA H200"),
               row("vgg16", augment="none", epoch_seconds=10, trained_on="NVIDIA H200"))
    check = next(c for c in claims.claim_augmentation(df).checks if "epoch of VGG16" in c.statement)
    assert check.outcome == "holds"


def test_prediction_times_timed_on_different_devices_are_not_compared():
    """A GPU-trained VGG16-BN timed on that machine's CPU against MobileNetV1 timed on the
    study's CPU: the difference would be the CPUs'."""
    df = frame(row("vgg16", mAP=0.7, ms=100, device_name="Intel Xeon"),
               row("mobilenet_v1", mAP=0.6, ms=20, device_name="AMD EPYC"))
    check = next(c for c in claims.claim_backbone(df).checks if "per prediction" in c.statement)
    assert check.outcome == "cannot test"
    assert "timed on different devices (AMD EPYC and Intel Xeon)" in check.detail


def test_two_machines_with_the_same_device_are_compared_apart():
    hw = frame(hw_row("cpu", "Xeon", "vgg16", 100, threads=2, machine="study machine"),
               hw_row("cpu", "Xeon", "mobilenet_v1", 20, threads=2, machine="study machine"),
               hw_row("cpu", "Xeon", "vgg16", 100, threads=2, machine="laptop"),
               hw_row("cpu", "Xeon", "mobilenet_v1", 400, threads=2, machine="laptop", **BUSY))
    outcomes = {c.statement: c.outcome for c in claims.claim_gpu_cpu(hw).checks}
    assert outcomes["on Xeon (2 threads) of study machine, MobileNetV1-SSD's inference is faster"] == "holds"
    assert outcomes["on Xeon (2 threads) of laptop, MobileNetV1-SSD's inference is faster"] == "cannot test"


def test_claim_5_with_untrained_weights_only_fails():
    """Untrained weights send every default box into NMS: the share after the forward pass
    is an upper bound, so a share under half fails and one over half says nothing."""
    over = frame(hw_row("cuda", "H100", "vgg16", 5, trained=False))  # reference 15 ms: 67 % after the forward pass
    check = claims.claim_nms(pd.DataFrame(), over).checks[0]
    assert check.outcome == "cannot test" and "upper bound" in check.detail and "untrained" in check.statement
    under = frame(hw_row("cuda", "H100", "vgg16", 5, trained=False, reference_prediction_ms=6.0))
    check = claims.claim_nms(pd.DataFrame(), under).checks[0]
    assert check.outcome == "fails" and "upper bound" in check.detail
    trained = frame(hw_row("cuda", "H100", "vgg16", 5, trained=True))
    assert claims.claim_nms(pd.DataFrame(), trained).checks[0].outcome == "holds"


# --- the spread between seeds -----------------------------------------------------------
def seed_rows(backbone, values, **kw):
    return [row(backbone, mAP=v, seed=s, label=f"{backbone} baseline", **kw) for s, v in enumerate(values)]


def test_a_difference_within_the_spread_between_seeds_is_too_close_to_call():
    df = frame(row("vgg16", mAP=0.70, ms=100), row("mobilenet_v1", mAP=0.60, ms=20))
    wide = SeedNoise(frame(*seed_rows("mobilenet_v1", [0.55, 0.62, 0.68])))  # spread 0.13 > 0.10
    check = claims.claim_backbone(df, wide).checks[0]
    assert check.outcome == "too close to call"
    assert check.detail.endswith("; within the spread between seeds of mAP, 0.130 (mobilenet_v1 baseline, "
                                 "10 epochs, 3 seeds; 1 other setting compared, one seed)")
    narrow = SeedNoise(frame(*seed_rows("mobilenet_v1", [0.58, 0.61])))  # spread 0.03 < 0.10
    check = claims.claim_backbone(df, narrow).checks[0]
    assert check.outcome == "holds" and "; beyond the spread between seeds of mAP, 0.030" in check.detail
    # no setting with several seeds: the verdict says the training noise was not measured
    check = claims.claim_backbone(df, SeedNoise(None)).checks[0]
    assert check.outcome == "holds" and check.detail.endswith("spread between seeds not measured")
    # timings are not held against the spread of mAPs
    assert "seeds" not in claims.claim_backbone(df, wide).checks[1].detail


def test_a_difference_of_two_drops_is_held_against_twice_the_spread():
    df = frame(row("vgg16", mAP=0.6), row("vgg16", mining="none", mAP=0.55),
               row("mobilenet_v1", mAP=0.65), row("mobilenet_v1", mining="none", mAP=0.5))
    seeds = SeedNoise(frame(*seed_rows("mobilenet_v1", [0.62, 0.68])))  # spread 0.06
    checks = {c.statement: c for c in claims.claim_mining(df, seeds).checks}
    assert checks["without mining MobileNetV1's mAP drops"].outcome == "holds"      # 0.15 > 0.06
    assert checks["without mining VGG16's mAP drops"].outcome == "too close to call"  # 0.05 < 0.06 (stand-in)
    larger = checks["the drop is larger for MobileNetV1"]                           # 0.10 < 2 x 0.06
    assert larger.outcome == "too close to call"
    assert larger.detail.endswith("; within 0.120 = 2 x the spread between seeds of mAP, 0.060 (mobilenet_v1 "
                                  "baseline, 10 epochs, 2 seeds; 3 other settings compared, one seed)")


def test_assess_all_reads_the_seeds_experiment():
    backbone = frame(row("vgg16", mAP=0.70, ms=100), row("mobilenet_v1", mAP=0.60, ms=20))
    seeds = frame(*seed_rows("mobilenet_v1", [0.5, 0.7]))
    verdict = claims.assess_all({"backbone": backbone, "seeds": seeds})[0]
    assert verdict.checks[0].outcome == "too close to call" and verdict.status == "too close to call"
    assert claims.assess_all({"backbone": backbone})[0].status == "supported"


def test_a_run_that_restarted_cannot_be_compared():
    df = frame(row("vgg16", mAP=0.70, ms=100, loss_jumps="", restarted_at=np.nan),
               row("mobilenet_v1", mAP=0.40, ms=20, label="MobileNetV1 baseline",
                   loss_jumps="epoch 23: 4.68 to 11.69, undoing every earlier epoch", restarted_at=23))
    check = claims.claim_backbone(df).checks[0]
    assert check.outcome == "cannot test"
    assert check.detail == ("MobileNetV1 baseline restarted: its training loss jumped at epoch 23 above every "
                            "earlier epoch's, undoing all its training before")
    # a jump that undid some epochs only is named beside the verdict, which stands
    df.loc[1, ["loss_jumps", "restarted_at"]] = ["epoch 9: 5.17 to 7.66, undoing epochs 2-8", np.nan]
    check = claims.claim_backbone(df).checks[0]
    assert check.outcome == "holds"
    assert check.detail.endswith("; training loss jumped in MobileNetV1 baseline: epoch 9: 5.17 to 7.66, "
                                 "undoing epochs 2-8")
