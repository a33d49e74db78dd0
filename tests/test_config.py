"""Parameter files: layering, validation with errors naming the file and key, run ids."""

from pathlib import Path

import pytest

from ssdstudy.config import ConfigError, RunConfig, build_config, load_run_config, read_profile
from ssdstudy.study import make_plan, read_experiment

PARAMS = Path(__file__).resolve().parent.parent / "parameters"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_layers_override_defaults_and_coerce_ints_to_floats(tmp_path):
    cfg = load_run_config(write(tmp_path, "model: {backbone: mobilenet_v1, width: 1}\ntrain: {lr: 1}\n"))
    assert cfg.model.width == 1.0 and isinstance(cfg.model.width, float)
    assert cfg.train.lr == 1.0
    assert cfg.train.momentum == 0.9 and cfg.train.weight_decay == 5e-4


def test_profile_key_builds_on_a_profile(tmp_path):
    cfg = load_run_config(write(tmp_path, "profile: smoke\ntrain: {epochs: 3}\n"))
    assert cfg.model.image_size == read_profile("smoke").layer[1]["model"]["image_size"]
    assert cfg.train.epochs == 3


@pytest.mark.parametrize(
    "text, needle",
    [
        ("model: {backbone: vgg16, depth: 3}\n", "unknown key model.depth"),
        ("train: {epochs: many}\n", "train.epochs must be an integer"),
        ("train: {scheduler: linear}\n", "train.scheduler must be one of"),
        ("augment: {crop: maybe}\n", "augment.crop must be true or false"),
        ("model: {width: 1.5}\n", "model.width must be in (0, 1]"),
        ("model: {backbone: vgg16, width: 0.5}\n", "model.width applies to mobilenet_v1 and squeezenet only"),
        ("loss: [3]\n", "loss must be a mapping"),
        ("train: {epochs: 3\n", "not valid YAML"),
        ("profile: nosuch\n", "unknown profile 'nosuch'"),
    ],
)
def test_bad_parameter_files_name_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert needle in str(err.value)
    if "unknown profile" not in needle:
        assert str(path) in str(err.value)


def test_null_mining_is_allowed_and_changes_the_run_id():
    a = build_config(("a", {"loss": {"neg_pos_ratio": 3}}))
    b = build_config(("b", {"loss": {"neg_pos_ratio": None}}))
    assert b.loss.neg_pos_ratio is None
    assert a.run_id != b.run_id


def test_run_id_ignores_workers_and_device_but_not_the_seed():
    base = RunConfig()
    other = build_config(("x", {"train": {"workers": 4, "device": "cpu"}}))
    seeded = build_config(("x", {"train": {"seed": 1}}))
    assert base.run_id == other.run_id
    assert base.run_id != seeded.run_id


@pytest.mark.parametrize("profile", sorted(p.stem for p in (PARAMS / "profiles").glob("*.yaml")))
def test_every_profile_and_experiment_validates(profile):
    plan = make_plan(profile)
    assert plan.runs
    assert {e.name for e in plan.experiments} == set(read_profile(profile).study.experiments)


def test_experiments_share_runs_by_id():
    prof = read_profile("default")
    backbone = {c.run_id for c in read_experiment("backbone", prof).runs}
    sizes = {c.run_id for c in read_experiment("sizes", prof).runs}
    augmentation = {c.run_id for c in read_experiment("augmentation", prof).runs}
    assert backbone == sizes
    assert len(backbone & augmentation) == 2  # the MobileNet baselines with and without augmentation


def test_voc_profile_is_the_studys_protocol():
    plan = make_plan("voc")
    runs = list(plan.runs.values())
    assert {r.model.image_size for r in runs} == {300}
    assert all(r.data.train_years == ["2007", "2012"] and r.data.test_years == ["2007"] for r in runs)
    mining = read_experiment("mining", plan.profile).runs
    assert {r.train.epochs for r in mining} == {15}
    assert {r.loss.neg_pos_ratio for r in mining} == {3.0, None}
    width = read_experiment("width", plan.profile).runs
    assert all(r.model.pretrained is None for r in width)
    assert sorted({r.model.width for r in width}) == [0.25, 0.5, 0.75, 1.0]


def test_bad_experiment_file_names_file_and_key(tmp_path, monkeypatch):
    import ssdstudy.study as study

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "broken.yaml").write_text("runs:\n  - model: {backbone: vgg16, widht: 1}\n")
    monkeypatch.setattr(study, "PARAMETERS", tmp_path)
    with pytest.raises(ConfigError) as err:
        study.read_experiment("broken", read_profile("smoke"))
    assert "broken.yaml" in str(err.value) and "runs[0].model.widht" in str(err.value)


def test_the_project_root_can_be_named_and_everything_follows_it(tmp_path):
    """$SSDSTUDY_ROOT puts parameters, results and relative data roots in one place,
    whatever the working folder."""
    import os
    import subprocess
    import sys

    code = ("from ssdstudy import config, runs, paths; "
            "print(config.PARAMETERS); print(runs.RESULTS); print(paths.resolve_path('data/synth'))")
    env = {**os.environ, "SSDSTUDY_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(tmp_path / "parameters"), str(tmp_path / "results"), str(tmp_path / "data" / "synth")]


def test_an_installed_package_finds_the_project_above_the_working_folder(tmp_path):
    """Installed non-editable, the package is not in a project: the project is the nearest
    folder holding parameters/profiles/ from the working folder up."""
    import os
    import shutil
    import subprocess
    import sys

    import ssdstudy

    site = tmp_path / "site"
    shutil.copytree(Path(ssdstudy.__file__).parent, site / "ssdstudy", ignore=shutil.ignore_patterns("__pycache__"))
    project = tmp_path / "project"
    (project / "parameters" / "profiles").mkdir(parents=True)
    (project / "book").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SSDSTUDY_ROOT"}
    env["PYTHONPATH"] = str(site)
    code = "import ssdstudy, ssdstudy.paths as p; print(ssdstudy.__file__); print(p.PROJECT)"
    for cwd, root in ((project / "book", project), (tmp_path, tmp_path)):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [str(site / "ssdstudy" / "__init__.py"), str(root)]


def test_the_project_can_be_given_on_the_command_line(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(PARAMS, tmp_path / "parameters")
    env = {k: v for k, v in os.environ.items() if k != "SSDSTUDY_ROOT"}
    cmd = [sys.executable, "-m", "ssdstudy.cli", "--project", str(tmp_path), "study", "run", "--profile", "smoke",
           "--only", "hardware", "--dry-run"]
    out = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, check=True).stdout
    assert "experiment hardware: " in out and "experiment width" not in out
    cmd[4] = str(tmp_path / "nowhere")
    bad = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no parameters/profiles/" in bad.stderr


@pytest.mark.parametrize(("layer", "key"), [
    ({"loss": {"neg_pos_ratio": -1}}, "loss.neg_pos_ratio"),
    ({"train": {"threads": 0}}, "train.threads"),
    ({"train": {"workers": -1}}, "train.workers"),
    ({"train": {"device": "tpu"}}, "train.device"),
    ({"data": {"max_train_images": -5}}, "data.max_train_images"),
    ({"data": {"synth": {"train": -1}}}, "data.synth"),
    ({"timing": {"images": 0}}, "timing.images"),
    ({"timing": {"devices": ["gpu"]}}, "timing.devices"),
    ({"eval": {"score_threshold": 2.0}}, "eval.score_threshold"),
    ({"eval": {"nms_iou": -0.1}}, "eval.nms_iou"),
])
def test_numeric_ranges_and_devices_are_checked_on_load(layer, key):
    with pytest.raises(ConfigError, match=rf"run.yaml: {key}"):
        build_config(("run.yaml", layer))


def test_scientific_notation_is_a_number_and_an_empty_file_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 1e-3}\n")
    assert load_run_config(path).train.lr == 0.001
    path.write_text("")
    with pytest.raises(ConfigError, match="run.yaml: the parameter file is empty"):
        load_run_config(path)


def test_profile_names_are_plain_names():
    with pytest.raises(ConfigError, match="plain name"):
        read_profile("../../x")


def test_tiling_fields_are_checked_and_leave_other_run_ids_alone():
    plain = build_config(("run.yaml", {}))
    same = build_config(("run.yaml", {"model": {"priors": None, "stride8_map": False}}))
    assert plain.run_id == same.run_id
    tiled = build_config(("run.yaml", {"model": {"priors": {"min_scale": 0.1}}}))
    assert tiled.run_id != plain.run_id and tiled.model.priors.aspect_ratios == [2.0, 3.0]
    with pytest.raises(ConfigError, match="run.yaml: model.stride8_map applies to mobilenet_v1"):
        build_config(("run.yaml", {"model": {"backbone": "vgg16", "stride8_map": True}}))
    with pytest.raises(ConfigError, match="run.yaml: model.priors needs 0 < min_scale < max_scale"):
        build_config(("run.yaml", {"model": {"priors": {"min_scale": 0.9, "max_scale": 0.5}}}))
    with pytest.raises(ConfigError, match="run.yaml: model.priors.aspect_ratios"):
        build_config(("run.yaml", {"model": {"priors": {"aspect_ratios": [0.5]}}}))


def test_outlier_clipping_is_checked_and_leaves_other_run_ids_alone():
    plain = build_config(("run.yaml", {}))
    assert build_config(("run.yaml", {"train": {"clip_outliers": None}})).run_id == plain.run_id
    clipped = build_config(("run.yaml", {"train": {"clip_outliers": 20}}))
    assert clipped.run_id != plain.run_id and clipped.train.clip_outliers == 20.0
    with pytest.raises(ConfigError, match="run.yaml: train.clip_outliers must be more than 1"):
        build_config(("run.yaml", {"train": {"clip_outliers": 0.5}}))
