"""The spread between seeds: which setting's seeds bound a comparison, scaled to its
statistic, and what stands in when the settings compared have one seed each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssdstudy.results import seed_spread
from ssdstudy.seednoise import SeedNoise


def run(backbone="mobilenet_v1", width=1.0, augment="all", seed=0, mAP=0.7, small=0.2):
    return {"run_id": f"{backbone}-{width}-{augment}-{seed}", "label": f"{backbone} x{width:g} {augment}",
            "backbone": backbone, "width": width, "augment": augment, "mining": "3:1", "seed": seed,
            "voc07_map": mAP, "bin 0-5": small}


def frame(*rows):
    return pd.DataFrame(list(rows))


SEEDS = frame(run(mAP=0.73, small=0.10), run(seed=1, mAP=0.78, small=0.16), run(seed=2, mAP=0.75, small=0.12),
              run(augment="none", mAP=0.60), run(augment="none", seed=1, mAP=0.62),
              run(width=0.25, mAP=0.50))  # x0.25 has one seed: no spread of its own


def test_a_comparison_takes_the_largest_spread_of_the_settings_it_compares():
    noise = SeedNoise(SEEDS)
    band = noise.band([frame(run()), frame(run(augment="none"))])
    assert band.spread == pytest.approx(0.05) and band.width == pytest.approx(0.05)  # 0.78 - 0.73 beats 0.02
    assert band.seeds == 3 and not band.stand_in
    assert band.text() == "the spread between seeds of mAP, 0.050 (mobilenet_v1 x1 all, 3 seeds)"
    only_none = noise.band([frame(run(augment="none"))])
    assert only_none.spread == pytest.approx(0.02) and only_none.seeds == 2


def test_settings_with_one_seed_borrow_the_study_s_largest_spread_and_say_so():
    band = SeedNoise(SEEDS).band([frame(run(width=0.25)), frame(run(backbone="vgg16_bn"))])
    assert band.stand_in and band.spread == pytest.approx(0.05)
    assert band.text() == ("the spread between seeds of mAP, 0.050 (the study's largest, of mobilenet_v1 x1 all, "
                           "3 seeds, standing in: the settings compared have one seed each)")


def test_a_band_names_the_settings_compared_that_have_one_seed():
    band = SeedNoise(SEEDS).band([frame(run()), frame(run(width=0.25))])
    assert not band.stand_in and band.unmeasured == 1
    assert band.text().endswith("3 seeds; 1 other setting compared, one seed)")


def test_a_statistic_of_several_differences_gets_a_scaled_band():
    band = SeedNoise(SEEDS).band([frame(run())], scale=2.0)
    assert band.width == pytest.approx(0.10) and band.spread == pytest.approx(0.05)
    assert band.text().startswith("0.100 = 2 x the spread between seeds of mAP, 0.050")


def test_size_bins_have_their_own_spreads():
    band = SeedNoise(SEEDS).band([frame(run())], ["bin 0-5"])
    assert band.spread == pytest.approx(0.06) and band.metric == "bin 0-5"
    assert band.text().startswith("the spread between seeds of the 0-5 % bin's mAP, 0.060")


def test_no_band_without_several_seeds():
    assert SeedNoise(None).band([frame(run())]) is None
    assert not SeedNoise(frame(run(), run(augment="none"))).measured
    assert SeedNoise(SEEDS).measured


def test_pretrained_and_scratch_runs_are_not_seeds_of_one_setting():
    pretrained = frame(*[{**run(seed=s, mAP=v), "pretrained": "mobilenet.pth"} for s, v in enumerate((0.7, 0.9))])
    scratch = frame({**run(), "pretrained": "scratch"})
    band = SeedNoise(pretrained).band([scratch])
    assert band.stand_in  # the pretrained setting's spread is not the scratch run's own


def test_runs_differing_in_their_default_boxes_are_not_seeds_of_one_setting():
    rows = frame({**run(mAP=0.70), "tiling": "own"}, {**run(mAP=0.60, seed=0), "tiling": "38x38 map"})
    spread = seed_spread(rows)
    assert len(spread) == 2 and list(spread["seeds"]) == [1, 1]
    assert np.isnan(spread["bootstrap_half_width"]).all()  # no intervals in these rows


def test_each_bin_has_its_spread_per_setting_with_several_seeds():
    from ssdstudy.results import bin_seed_spread

    table = bin_seed_spread(SEEDS.assign(**{"bin 5-10": np.nan}))
    assert list(table.index) == ["mobilenet_v1 x1 all", "mobilenet_v1 x1 none"]  # x0.25 has one seed
    assert list(table.columns) == ["0-5 %"]  # no test images in 5-10 %
    assert table["0-5 %"].iloc[0] == pytest.approx(0.06) and table["0-5 %"].iloc[1] == pytest.approx(0.0)
    assert bin_seed_spread(SEEDS.iloc[:0]).empty
