"""Tests of ssdstudy.evaluate.bootstrap: weighted rescoring equals evaluating duplicated
images, the outcomes file, paired intervals, and their use by the claims."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ssdstudy import claims
from ssdstudy.data.bins import SIZE_BINS
from ssdstudy.evaluate import evaluate, image_bins, voc_matches
from ssdstudy.evaluate.bootstrap import (
    Outcomes,
    paired_contrast,
    paired_difference,
    resample_weights,
)
from tests.test_evaluate import dets, random_case, record

CLASSES = ("a", "b", "c")


def unique_scores(detections, seed):
    """The random case with distinct scores, so that no order among ties is arbitrary."""
    rng = np.random.default_rng(seed)
    return {k: {**v, "scores": rng.random(len(v["scores"])).astype(np.float64)} for k, v in detections.items()}


def outcomes_of(records, detections):
    return Outcomes.from_matches(voc_matches(records, detections, CLASSES), [r.image_id for r in records])


@pytest.mark.parametrize("seed", range(4))
def test_unit_weights_give_the_evaluation_map(seed):
    records, detections = random_case(seed, images=60)
    outcomes = outcomes_of(records, detections)
    expected = evaluate(records, detections, CLASSES, coco=False, size_bins=False)["voc07_map"]
    assert outcomes.voc07_map()[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_weights_equal_evaluating_duplicated_images(seed):
    records, detections = random_case(seed, images=40)
    detections = unique_scores(detections, seed)
    outcomes = outcomes_of(records, detections)
    weights = resample_weights(len(records), 5, seed=seed)
    for row, got in zip(weights, outcomes.voc07_map(weights), strict=True):
        drawn_records, drawn_dets = [], {}
        for i, count in enumerate(row):
            for copy in range(count):
                new_id = f"{records[i].image_id}-{copy}"
                drawn_records.append(dataclasses.replace(records[i], image_id=new_id))
                drawn_dets[new_id] = detections[records[i].image_id]
        expected = evaluate(drawn_records, drawn_dets, CLASSES, coco=False, size_bins=False)["voc07_map"]
        assert got == pytest.approx(expected, abs=1e-12)


def test_outcomes_file_round_trip(tmp_path):
    records, detections = random_case(1, images=20)
    outcomes = outcomes_of(records, detections)
    outcomes.save(tmp_path / "runs" / "outcomes.npz")
    back = Outcomes.load(tmp_path / "runs" / "outcomes.npz")
    assert back.class_names == CLASSES and back.image_ids == outcomes.image_ids
    for field in ("labels", "image_index", "outcome", "positives"):
        np.testing.assert_array_equal(getattr(back, field), getattr(outcomes, field))
    assert list(tmp_path.joinpath("runs").iterdir()) == [tmp_path / "runs" / "outcomes.npz"]


def test_difference_with_itself_is_zero_and_not_settled():
    records, detections = random_case(2, images=60)
    outcomes = outcomes_of(records, detections)
    diff = paired_difference(outcomes, outcomes, resamples=200)
    assert (diff.difference, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert not diff.settled


def perfect_and_noisy(images=80, seed=0):
    """A detector that finds every object against one that mostly misses: clearly apart."""
    rng = np.random.default_rng(seed)
    records, perfect, noisy = [], {}, {}
    for i in range(images):
        xy = rng.uniform(0, 50, (2, 2))
        boxes = np.concatenate([xy, xy + 40], axis=1)
        labels = rng.integers(1, 4, 2)
        records.append(record(f"{i:03d}", boxes, labels, width=100, height=100))
        perfect[f"{i:03d}"] = dets(boxes, rng.uniform(0.5, 1, 2), labels)
        noisy[f"{i:03d}"] = dets(boxes + 35 * (rng.random((2, 1)) < 0.8), rng.uniform(0.5, 1, 2), labels)
    return records, perfect, noisy


def test_a_clear_difference_is_settled_and_its_interval_holds_it():
    records, perfect, noisy = perfect_and_noisy()
    a, b = outcomes_of(records, perfect), outcomes_of(records, noisy)
    diff = paired_difference(a, b, resamples=300)
    assert diff.settled and diff.low > 0
    assert diff.low <= diff.difference <= diff.high
    assert diff.difference == pytest.approx(1.0 - b.voc07_map()[0])


def test_different_test_sets_are_refused():
    records, detections = random_case(3, images=30)
    a = outcomes_of(records, detections)
    b = outcomes_of(records[:-1], {r.image_id: detections[r.image_id] for r in records[:-1]})
    with pytest.raises(ValueError, match="same test images"):
        paired_difference(a, b)


def _run_frame(tmp_path, name, outcomes, **columns):
    folder = tmp_path / name
    outcomes.save(folder / "outcomes.npz")
    return pd.DataFrame([{"run_id": name, "run_dir": str(folder), "width": 1.0, "mining": "3:1",
                          "voc07_map": float(outcomes.voc07_map()[0]), **columns}])


def test_claims_call_a_noise_level_difference_too_close(tmp_path):
    records, _, noisy = perfect_and_noisy()
    same = outcomes_of(records, noisy)  # two runs with the same detections, above the mAP floor
    assert same.voc07_map()[0] > claims.MAP_FLOOR
    df = pd.concat([
        _run_frame(tmp_path, "vgg", same, backbone="vgg16", augment="all", prediction_ms=30.0),
        _run_frame(tmp_path, "mob", same, backbone="mobilenet_v1", augment="all", prediction_ms=10.0),
    ], ignore_index=True)
    verdict = claims.claim_backbone(df)
    accuracy = verdict.checks[0]
    assert accuracy.undecided and accuracy.holds is None
    assert "interval" in accuracy.detail
    assert verdict.status == "too close to call"  # the timing check holds, accuracy undecided: not supported
    assert "1 too close to call" in verdict.summary()
    assert "*too close to call*" in verdict.markdown()


def test_claims_settle_a_clear_difference(tmp_path):
    records, perfect, noisy = perfect_and_noisy()
    df = pd.concat([
        _run_frame(tmp_path, "vgg", outcomes_of(records, perfect), backbone="vgg16", augment="all",
                   prediction_ms=30.0),
        _run_frame(tmp_path, "mob", outcomes_of(records, noisy), backbone="mobilenet_v1", augment="all",
                   prediction_ms=10.0),
    ], ignore_index=True)
    verdict = claims.claim_backbone(df)
    assert verdict.checks[0].holds is True and not verdict.checks[0].undecided
    assert verdict.status == "supported"


def test_all_checks_too_close_gives_that_verdict():
    verdict = claims.Verdict(1, (claims.Check("x", None, "d", undecided=True),))
    assert verdict.status == "too close to call"
    assert verdict.summary() == "1 too close to call"


def test_claims_without_outcome_files_compare_directions(tmp_path):
    df = pd.DataFrame([
        {"run_id": "v", "run_dir": str(tmp_path / "v"), "backbone": "vgg16", "augment": "all",
         "mining": "3:1", "width": 1.0, "voc07_map": 0.30, "prediction_ms": 30.0},
        {"run_id": "m", "run_dir": str(tmp_path / "m"), "backbone": "mobilenet_v1", "augment": "all",
         "mining": "3:1", "width": 1.0, "voc07_map": 0.20, "prediction_ms": 10.0},
    ])
    verdict = claims.claim_backbone(df)
    assert verdict.checks[0].holds is True and "interval" not in verdict.checks[0].detail


def test_unequal_training_budgets_are_named_in_the_verdict():
    rows = [
        {"run_id": "v", "backbone": "vgg16", "augment": "all", "mining": "3:1", "width": 1.0,
         "voc07_map": 0.01, "prediction_ms": 30.0, "train_images": 350.0, "epochs": 6},
        {"run_id": "m", "backbone": "mobilenet_v1", "augment": "all", "mining": "3:1", "width": 1.0,
         "voc07_map": 0.04, "prediction_ms": 10.0, "train_images": 1000.0, "epochs": 6},
    ]
    note = claims.claim_backbone(pd.DataFrame(rows)).note
    assert "not trained on the same budget" in note and "350 images" in note and "1,000" in note
    rows[0]["train_images"] = 1000.0
    assert claims.claim_backbone(pd.DataFrame(rows)).note == ""


def test_a_contrast_of_four_runs_equals_its_differences():
    records, perfect, noisy = perfect_and_noisy()
    a, b = outcomes_of(records, perfect), outcomes_of(records, noisy)
    both = paired_contrast([(1.0, a), (-1.0, b), (-1.0, b), (1.0, b)], resamples=200)
    single = paired_difference(a, b, resamples=200)
    assert (both.difference, both.low, both.high) == pytest.approx((single.difference, single.low, single.high))


def test_the_difference_of_mining_drops_is_bootstrapped(tmp_path):
    records, perfect, noisy = perfect_and_noisy()
    good, bad = outcomes_of(records, perfect), outcomes_of(records, noisy)
    rows = [("m_on", good, "mobilenet_v1", "3:1"), ("m_off", bad, "mobilenet_v1", "none"),
            ("v_on", bad, "vgg16", "3:1"), ("v_off", bad, "vgg16", "none")]
    df = pd.concat([_run_frame(tmp_path, name, o, backbone=bb, augment="all", prediction_ms=1.0).assign(mining=m)
                    for name, o, bb, m in rows], ignore_index=True)
    check = next(c for c in claims.claim_mining(df).checks if c.statement == "the drop is larger for MobileNetV1")
    assert check.holds is True and "interval" in check.detail
    df.loc[df["run_id"] == "m_on", "run_dir"] = df.loc[df["run_id"] == "m_off", "run_dir"].iloc[0]
    df.loc[df["run_id"] == "m_on", "voc07_map"] = df.loc[df["run_id"] == "m_off", "voc07_map"].iloc[0]
    check = next(c for c in claims.claim_mining(df).checks if c.statement == "the drop is larger for MobileNetV1")
    assert check.undecided


# --- size bins -------------------------------------------------------------------------


def binned_outcomes(records, detections):
    return Outcomes.from_matches(voc_matches(records, detections, CLASSES), [r.image_id for r in records],
                                 image_bins(records))


@pytest.mark.parametrize("seed", range(3))
def test_bin_maps_at_unit_weights_equal_the_evaluation(seed):
    records, detections = random_case(seed, images=120)
    outcomes = binned_outcomes(records, detections)
    expected = evaluate(records, detections, CLASSES, coco=False)["size_bins"]
    got = outcomes.bin_voc07_maps()[0]
    assert sum(v["images"] for v in expected.values()) > 30  # the case fills several bins
    np.testing.assert_allclose(got, [expected[name]["voc07_map"] for name in SIZE_BINS], atol=1e-12)


def test_bin_maps_of_a_resample_weigh_only_the_bin_images():
    records, detections = random_case(5, images=80)
    outcomes = binned_outcomes(records, detections)
    weights = resample_weights(len(records), 6, seed=1)
    got = outcomes.bin_voc07_maps(weights)
    for b in range(len(SIZE_BINS)):
        in_bin = outcomes.image_bins == b
        if in_bin.any():
            np.testing.assert_allclose(got[:, b], outcomes.voc07_map(weights * in_bin), atol=1e-12)
        else:
            assert np.isnan(got[:, b]).all()


def test_outcomes_file_keeps_the_bins_and_reads_files_without_them(tmp_path):
    records, detections = random_case(1, images=20)
    outcomes = binned_outcomes(records, detections)
    outcomes.save(tmp_path / "with.npz")
    np.testing.assert_array_equal(Outcomes.load(tmp_path / "with.npz").image_bins, outcomes.image_bins)
    outcomes_of(records, detections).save(tmp_path / "without.npz")
    older = Outcomes.load(tmp_path / "without.npz")
    assert older.image_bins is None
    with pytest.raises(ValueError, match="no size bins"):
        older.bin_voc07_maps()


def small_and_large(images=60, large=50, seed=0):
    """Images of one small object (1 % of the image, bin 0-5) or one large one (side
    ``large``: 25 %, bin 20-40, by default); detectors that find every object, only the
    large ones (and a third of the small ones), and only the small ones (and a third of
    the large ones): every detector scores above the claims' mAP floor in every bin, so
    the checks compare models that learned."""
    rng = np.random.default_rng(seed)
    records, found = [], {"all": {}, "large": {}, "small": {}}
    for i in range(images):
        side = 10 if i % 2 else large
        xy = rng.uniform(0, 100 - side, 2)
        box = np.concatenate([xy, xy + side])[None]
        label = rng.integers(1, 4, 1)
        name, score = f"{i:03d}", rng.uniform(0.5, 1, 1)
        records.append(record(name, box, label, width=100, height=100))
        found["all"][name] = dets(box, score, label)
        missed = dets(np.array([[0.0, 0.0, 1.0, 1.0]]), score, label)  # overlaps nothing
        also = (i // 2) % 3 == 0  # a third of the objects of the other size
        found["large"][name] = missed if side == 10 and not also else found["all"][name]
        found["small"][name] = found["all"][name] if side == 10 or also else missed
    return records, found


def _binned_frame(tmp_path, name, outcomes, **columns):
    df = _run_frame(tmp_path, name, outcomes, **columns)
    for b, value in zip(SIZE_BINS, outcomes.bin_voc07_maps()[0], strict=True):
        df[f"bin {b}"] = value
        df[f"images {b}"] = int(np.count_nonzero(outcomes.image_bins == SIZE_BINS.index(b)))
    return df


def test_the_small_object_gain_of_claim_2_is_bootstrapped(tmp_path):
    records, found = small_and_large()
    good, poor = binned_outcomes(records, found["all"]), binned_outcomes(records, found["large"])
    text = "for VGG16 the gain is largest on small objects (under 10 % of the image)"
    df = pd.concat([_binned_frame(tmp_path, "on", good, backbone="vgg16", augment="all"),
                    _binned_frame(tmp_path, "off", poor, backbone="vgg16", augment="none")], ignore_index=True)
    check = next(c for c in claims.claim_augmentation(df).checks if c.statement == text)
    assert check.holds is True and not check.undecided and "interval" in check.detail
    df = pd.concat([_binned_frame(tmp_path, "on", poor, backbone="vgg16", augment="all"),
                    _binned_frame(tmp_path, "off", poor, backbone="vgg16", augment="none")], ignore_index=True)
    check = next(c for c in claims.claim_augmentation(df).checks if c.statement == text)
    assert check.undecided and check.holds is None


def test_the_size_checks_of_claim_7_are_bootstrapped(tmp_path):
    records, found = small_and_large(large=70)  # 49 %: bin 40-60
    runs = {name: binned_outcomes(records, found[name]) for name in found}
    df = pd.concat([
        _binned_frame(tmp_path, "v", runs["all"], backbone="vgg16", augment="all"),
        _binned_frame(tmp_path, "m", runs["large"], backbone="mobilenet_v1", augment="all"),
        _binned_frame(tmp_path, "v0", runs["small"], backbone="vgg16", augment="none"),
        _binned_frame(tmp_path, "m0", runs["all"], backbone="mobilenet_v1", augment="none"),
    ], ignore_index=True)
    checks = {c.statement: c for c in claims.claim_sizes(df).checks}
    lead = checks["with augmentation, VGG16's lead over MobileNetV1 is largest on small objects (under 10 %)"]
    assert lead.holds is True and not lead.undecided and "interval" in lead.detail
    large = checks["without augmentation MobileNetV1 beats VGG16 on objects of 40-80 % of the image"]
    assert large.holds is True and not large.undecided and "interval" in large.detail
    lowest = checks["MobileNetV1: the smallest populated bin has the lowest mAP"]
    assert lowest.holds is True and not lowest.undecided
    # a detector that finds every object has no hardest bin: a tie at the bottom holds
    tie = checks["VGG16: the smallest populated bin has the lowest mAP"]
    assert tie.holds is True and "interval" in tie.detail
    highest = checks["VGG16, no augmentation: the smallest populated bin has the lowest mAP"]
    assert highest.holds is False and not highest.undecided
    # the same run on both sides of a lead: nothing to call
    df.loc[df["run_id"] == "m", ["run_dir"] + [f"bin {b}" for b in SIZE_BINS]] = (
        df.loc[df["run_id"] == "v", ["run_dir"] + [f"bin {b}" for b in SIZE_BINS]].to_numpy())
    lead = next(c for c in claims.claim_sizes(df).checks if c.statement.startswith("with augmentation"))
    assert lead.undecided
