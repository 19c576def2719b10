"""Sweep files are checked before Ray starts: every bad space, stage or objective is a clear
error naming the file and the path; the pure selection helpers (Pareto front, best trial)."""
from pathlib import Path

import pytest
import yaml

from rlhf_ray.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def write(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["base"] = str(ROOT / "rlhf_ray" / "configs" / "ml-100k.yaml")
    raw.update(changes)
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(raw))
    return f


@pytest.mark.parametrize("name", ["smoke", "ppo", "lpo", "align", "pbt"])
def test_shipped_sweeps_load(name):
    from rlhf_ray.tune.spec import load_sweep

    sweep = load_sweep(ROOT / "tune_configs" / f"{name}.yaml")
    assert sweep.dims and sweep.cfg.trial
    cfgs = sweep.pipeline_configs({d.path: d.probes()[0] for d in sweep.dims})
    for d in sweep.dims:  # a sampled value lands in the typed config at its path
        section, *rest = d.path.split(".")
        v = cfgs[section].to_dict()
        for part in rest:
            v = v[part]
        assert v == d.probes()[0]


@pytest.mark.parametrize("space, message", [
    ({"ppo.kl_cof": {"uniform": [0, 1]}}, "has no field 'kl_cof'"),
    ({"nosuch.lr": {"uniform": [0, 1]}}, "unknown section 'nosuch'"),
    ({"ppo.policy": {"uniform": [0, 1]}}, "names a whole sub-config"),
    ({"ppo.kl_coef.x": {"uniform": [0, 1]}}, "is a value, not a sub-config"),
    ({"ppo.kl_coef": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"ppo.kl_coef": {"uniform": [1, 0.5]}}, "low < high"),
    ({"ppo.kl_coef": {"uniform": [-1, 1]}}, "ppo.kl_coef = -1"),
    ({"ppo.kl_coef": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"lpo.sampler": {"choice": ["gumbel", "nosuch"]}}, "'nosuch' is not one of"),
    ({"lpo.n_negatives": {"randint": [0, 4]}}, "lpo.n_negatives = 0"),
    ({"ppo.kl_coef": [0, 1]}, "expected one of"),
])
def test_bad_space_is_refused_before_any_trial(tmp_path, space, message):
    from rlhf_ray.tune.spec import load_sweep

    f = write(tmp_path, space=space)
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_bad_sweep_fields_are_refused(tmp_path):
    from rlhf_ray.tune.spec import load_sweep

    for changes, message in [({"trial": ["nosuch"]}, "unknown stage 'nosuch'"),
                             ({"prepare": ["data", "sft"], "trial": ["sft"]}, "both prepared and searched"),
                             ({"base": "nosuch-config"}, "neither a file"),
                             ({"scheduler": {"name": "hyperband"}}, "'hyperband' is not one of"),
                             ({"objective": {"weights": {"val/ndcg@10": "x"}}}, "is not a number"),
                             ({"num_samples": 0}, "num_samples: must be >= 1"),
                             ({"colour": "blue"}, "unknown key(s) ['colour']"),
                             ({"scheduler": {"name": "pbt"}}, "train exactly one stage"),
                             ({"scheduler": {"name": "pbt"}, "trial": ["ppo"], "space": {
                                 "ppo.policy.train.lr": {"loguniform": [1e-5, 1e-3]}}}, "cannot change on resume"),
                             ({"scheduler": {"name": "pbt"}, "trial": ["lpo"]}, "cannot resume")]:
        with pytest.raises(ConfigError) as e:
            load_sweep(write(tmp_path, **changes))
        assert message in str(e.value), (changes, str(e.value))


def test_cli_refuses_a_bad_sweep_without_starting_ray(tmp_path, capsys):
    from rlhf_ray.cli import main

    out = tmp_path / "out"
    rc = main(["tune", "--config", str(write(tmp_path, space={"ppo.kl_coef": {"uniform": [-1, 1]}})),
               "--out", str(out)])
    assert rc == 2
    assert "space.ppo.kl_coef = -1" in capsys.readouterr().err
    assert not out.exists()  # nothing prepared, no Tune experiment
    import sys

    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_objective_terms_and_values():
    from rlhf_ray.tune.spec import Objective

    one = Objective.from_dict({"metric": "val/recall@20", "mode": "max"})
    assert one.terms == {"val/recall@20": 1.0} and one.value({"val/recall@20": 0.3}) == 0.3
    mix = Objective.from_dict({"weights": {"val/ndcg@10": 1.0, "val/tail_recall@20": 0.25}})
    assert mix.value({"val/ndcg@10": 0.1, "val/tail_recall@20": 0.2}) == pytest.approx(0.15)
    assert mix.value({"val/ndcg@10": 0.1}) is None  # a missing term: no objective, not a partial sum


def test_overrides_nest_dotted_paths():
    from rlhf_ray.tune.space import overrides

    assert overrides({"ppo.kl_coef": 0.1, "ppo.reward.alpha": 0.3, "lpo.tau": 2.0}) == {
        "ppo": {"kl_coef": 0.1, "reward": {"alpha": 0.3}}, "lpo": {"tau": 2.0}}


def row(trial, status="completed", **m):
    return {"trial": trial, "status": status, **m}


def test_pareto_front_keeps_exactly_the_non_dominated_completed_trials():
    from rlhf_ray.tune.results import pareto_front

    keys = ["a", "b"]
    rows = [row("t1", a=0.3, b=0.1), row("t2", a=0.1, b=0.3), row("t3", a=0.2, b=0.2),
            row("t4", a=0.1, b=0.1),  # dominated by t3
            row("t5", a=0.3, b=0.1),  # ties t1: neither dominates
            row("t6", status="stopped", a=0.9, b=0.9),  # not completed: never on the front
            row("t7", a=float("nan"), b=0.5)]  # undefined metric: left out
    assert [r["trial"] for r in pareto_front(rows, keys)] == ["t1", "t2", "t3", "t5"]


def test_selection_is_among_completed_trials_in_the_objective_direction():
    from rlhf_ray.tune.results import select

    rows = [row("a", objective=0.2), row("b", objective=0.5, status="stopped"), row("c", objective=0.3),
            row("d", objective=None)]
    assert select(rows, "max")["trial"] == "c"
    assert select(rows, "min")["trial"] == "a"
    assert select([row("x", status="error", objective=1.0)], "max") is None


@pytest.mark.parametrize("searcher", ["random", "optuna"])
def test_searchers_suggest_the_default_first_then_points_inside_the_space(tmp_path, searcher):
    if searcher == "optuna":
        pytest.importorskip("optuna", reason="the optuna searcher needs the 'tune' extra")
    from rlhf_ray.tune.spec import load_sweep
    from rlhf_ray.tune.sweep import _searcher, default_point

    sweep = load_sweep(write(tmp_path, searcher=searcher, space={
        "ppo.kl_coef": {"loguniform": [0.01, 0.5]}, "lpo.sampler": {"choice": ["gumbel", "popularity"]},
        "lpo.n_negatives": {"randint": [2, 9]}}))
    cfgs = sweep.pipeline_configs()
    assert default_point(sweep) == sweep.defaults() == {"ppo.kl_coef": cfgs["ppo"].kl_coef,
                                                        "lpo.sampler": cfgs["lpo"].sampler,
                                                        "lpo.n_negatives": cfgs["lpo"].negatives}
    assert cfgs["lpo"].sampler in ("gumbel", "popularity")  # the default is a point of the space
    alg = _searcher(sweep)
    space = {d.path: d.domain() for d in sweep.dims}
    if searcher == "optuna":
        assert alg.set_search_properties("objective", "max", space)
        points = [alg.suggest(f"t{i}") for i in range(4)]
    else:
        from ray.tune.experiment import Experiment

        alg.add_configurations([Experiment("x", lambda c: None, config=space, num_samples=4)])
        points = [alg.next_trial().config for _ in range(4)]
    assert points[0] == default_point(sweep)
    for p in points[1:]:
        assert 0.01 <= p["ppo.kl_coef"] <= 0.5 and p["lpo.sampler"] in ("gumbel", "popularity")
        assert 2 <= p["lpo.n_negatives"] < 9
        sweep.pipeline_configs(p)  # every suggestion loads as a typed config


def test_relative_paths_in_the_base_config_are_made_absolute_for_the_trials(tmp_path, monkeypatch):
    """Tune runs each trial in its own directory: a path field written relative to where the sweep is
    started (pairs_file, PPO's reward members, a base_model directory) reaches the trials absolute; a
    name that is no file there (a Hugging Face model id), a URI and an absolute path stay as written."""
    from rlhf_ray.tune.spec import load_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.parquet").write_bytes(b"")
    (tmp_path / "m1").mkdir()
    (tmp_path / "gpt-local").mkdir()
    f = write(tmp_path, overrides={
        "reward": {"pairs_file": "pairs.parquet", "model": {"base_model": "gpt2"}},
        "ppo": {"reward": {"members": ["m1", "s3://bucket/m2", "/abs/m3"]}},
        "sft": {"model": {"base_model": "gpt-local"}},
    })
    sweep = load_sweep(f)
    assert sweep.base_raw["reward"]["pairs_file"] == str(tmp_path / "pairs.parquet")
    assert sweep.base_raw["reward"]["model"]["base_model"] == "gpt2"  # not a file here: a hub id stays
    assert sweep.base_raw["ppo"]["reward"]["members"] == [str(tmp_path / "m1"), "s3://bucket/m2", "/abs/m3"]
    assert sweep.base_raw["sft"]["model"]["base_model"] == str(tmp_path / "gpt-local")
    cfgs = sweep.pipeline_configs({d.path: d.probes()[0] for d in sweep.dims})
    assert cfgs["ppo"].reward.members[0] == str(tmp_path / "m1")  # and the typed config the trial builds
