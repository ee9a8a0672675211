"""The refiner end to end: paired stages on a known truth (the synthetic scorer: same pool, store and
refiner code path as training), resume, refusals, and one refinement that trains a tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from designspace import Design, DesignSpace, DesignSpaceError, Experiment, TrialStore
from designspace.refine import Refiner, load_states
from designspace.regime import Regime
from designspace.report import render, status

TRUTH = {"grouping": {"spindle": 3.0}, "allocation": {"uniform": 2.0}}


def synthetic(tmp_path, name="syn", **kw) -> Experiment:
    scorer = kw.pop("scorer", {"effects": TRUTH, "noise_sd": 0.8, "n_layers": 6})
    d = {"name": name, "tasks": ["sst2"], "backend": "sequential", "blocks": 4, "max_rounds": 3,
         "space": {"tuned_groups": [[1, 2, 3, 4], [1, 2]], "strategies": {g: [["lora"], ["adapter"]] for g in
                                                                          ("G1", "G2", "G3", "G4")}},
         "scorer": {"synthetic": scorer}, "output": str(tmp_path / name), **kw}
    return Experiment.from_dict(d)


def run(exp) -> Design:
    return Refiner(exp, log=lambda m: None, progress=False).run()


def test_a_real_winner_is_separated_and_equal_choices_are_not(tmp_path):
    exp = synthetic(tmp_path)
    design = run(exp)
    assert (design.grouping, design.allocation) == ("spindle", "uniform")
    states = {s.component: s for s in load_states(TrialStore(exp.store_path))}
    assert states["grouping"].status == "separated" and states["grouping"].kept == ["spindle"]
    # 6 layers in 4 groups: uniform and decreasing are one partition, merged and trained once.
    assert "uniform=decreasing" in states["grouping"].labels and len(states["grouping"].classes) == 4
    # Strategy sets make no difference in this truth: the stage may not claim one is worse.
    for g in range(1, 5):
        st = states[f"strategies.G{g}"]
        assert st.status in ("tie", "unresolved") and set(st.kept) == {"{lora}", "{adapter}"}


def test_elimination_stops_training_the_losers(tmp_path):
    exp = synthetic(tmp_path, stages=["grouping"], scorer={"effects": {"grouping": {"spindle": 6.0}},
                                                          "noise_sd": 0.8, "n_layers": 24})
    run(exp)
    (state,) = load_states(TrialStore(exp.store_path))
    assert state.status == "separated"
    # Round 1 trains every choice; once eliminated, a choice is not trained again.
    assert len(state.rounds) >= 1 and len(state.rounds[0].alive) == 5
    if len(state.rounds) > 1:
        assert len(state.rounds[1].alive) < 5


def test_a_rerun_trains_nothing_and_changes_nothing(tmp_path):
    exp = synthetic(tmp_path, blocks="auto", resolution=1.0, max_blocks=12)
    first = run(exp)
    store = TrialStore(exp.store_path)
    n, states = len(store.records()), [s.to_dict() for s in load_states(store)]
    assert run(exp) == first
    assert len(store.records()) == n and [s.to_dict() for s in load_states(store)] == states


def test_killed_and_resumed_ends_identical_to_an_uninterrupted_run(tmp_path):
    whole = synthetic(tmp_path, "whole")
    want = run(whole)
    killed = synthetic(tmp_path, "killed")
    code = textwrap.dedent(f"""
        import time, yaml
        from designspace import Experiment
        from designspace.pool import scorer
        from designspace.refine import Refiner
        real = scorer.SyntheticScorer.__call__
        def slow(self, spec):
            time.sleep(0.01)
            return real(self, spec)
        scorer.SyntheticScorer.__call__ = slow
        Refiner(Experiment.load({str(tmp_path / 'killed.yaml')!r}), progress=False).run()
    """)
    import yaml

    d = killed.to_dict()
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump({k: v for k, v in d.items() if v is not None}))
    for _ in range(3):  # kill it at a few points, then let it finish
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    got = run(Experiment.load(tmp_path / "killed.yaml"))
    assert got == want
    a = {r.key: r.score for r in TrialStore(whole.store_path).records()}
    b = {r.key: r.score for r in TrialStore(killed.store_path).records()}
    assert a == b, "same trials, same scores"
    sa = [s.to_dict() | {"name": s.name} for s in load_states(TrialStore(whole.store_path))]
    sb = [s.to_dict() | {"name": s.name} for s in load_states(TrialStore(killed.store_path))]
    assert sa == sb, "same plans, same decisions"


@pytest.mark.parametrize("change", [{"budget": 0.01}, {"data_seed": 1}, {"backbone": "smollm2-135m"},
                                    {"regime": {"n_train": 300}}])
def test_an_edited_experiment_under_an_existing_store_is_refused(tmp_path, change):
    """Before, a changed backbone or data seed trained nothing and reported the old rows as the new."""
    exp = synthetic(tmp_path, stages=["grouping"])
    run(exp)
    field = next(iter(change))
    edited = Experiment.from_dict({**{k: v for k, v in exp.to_dict().items() if v is not None},
                                   "regime": exp.regime.to_dict(), **change})
    with pytest.raises(DesignSpaceError, match=f"{field} differs from the experiment recorded") as e:
        run(edited)
    assert "\n" not in str(e.value) and "output" in str(e.value)
    # How it runs is not what it is: another engine is fine.
    run(Experiment.from_dict({**{k: v for k, v in exp.to_dict().items() if v is not None}, "n_jobs": 1}))


def test_lost_trials_stop_the_stage_with_one_line(tmp_path):
    exp = synthetic(tmp_path, stages=["grouping"], backend="loky", n_jobs=1, retries=0)
    refiner = Refiner(exp, log=lambda m: None, progress=False)

    class Crashing(type(refiner.scorer)):  # every block's bottleneck design kills its worker
        def __call__(self, spec):
            if spec.design.grouping == "bottleneck":
                os._exit(1)
            return super().__call__(spec)

    refiner.scorer = Crashing(**{k: getattr(refiner.scorer, k) for k in ("effects", "noise_sd")})
    with pytest.raises(DesignSpaceError, match="no finished trial for an infrastructure reason") as e:
        refiner.run()
    assert "\n" not in str(e.value) and "bottleneck" in str(e.value)
    assert load_states(TrialStore(exp.store_path))[0].status == "running"


def test_a_space_of_three_groups_has_three_strategy_stages(tmp_path):
    """DEFAULT_STAGES named strategies.G4, so an n_groups: 3 space failed."""
    exp = synthetic(tmp_path, space={"n_groups": 3, "tuned_groups": [[1, 2, 3]],
                                     "strategies": {g: [["lora"], ["bitfit"]] for g in ("G1", "G2", "G3")}})
    assert exp.stages[-1] == "strategies.G3" and len(exp.stages) == 6
    assert run(exp).n_groups == 3


def test_strategy_stage_of_an_untuned_group_is_skipped(tmp_path):
    exp = synthetic(tmp_path, space={"tuned_groups": [[2, 3]]})
    run(exp)
    states = {s.component: s for s in load_states(TrialStore(exp.store_path))}
    assert states["strategies.G1"].status == "skipped" and "G1 is not tuned" in states["strategies.G1"].note
    assert states["strategies.G2"].status != "skipped"


def test_status_and_report_say_what_each_interval_means(tmp_path):
    exp = synthetic(tmp_path)
    run(exp)
    text = status(exp)
    assert "1-grouping" in text and "separated: spindle" in text and "final design" in text
    report = render(exp, TrialStore(exp.store_path))
    assert "How to read the intervals" in report and "shown worse" in report.lower()
    assert "budget 0.500%" in report and "selection split of 1000 examples" in report


def test_bad_experiment_files_are_one_line(tmp_path):
    bad = {"designs_per_choice": 2, "blocks": 1, "alpha": 0.9, "stages": ["strategies.G5"],
           "regime": {"eval_batch_size": 0}, "selection": -1, "decision": "vote", "colour": "red"}
    for key, value in bad.items():
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"name: x\n{key}: {value!r}\n".replace("'", '"') if not isinstance(value, dict)
                        else f"name: x\n{key}: {value}\n")
        with pytest.raises(DesignSpaceError) as e:
            Experiment.load(path)
        assert "\n" not in str(e.value) and key.split(".")[0] in str(e.value), (key, str(e.value))


def test_missing_data_and_a_too_shallow_backbone_fail_before_any_work(tmp_path, tiny_bert_dir):
    exp = Experiment(name="bad", backbone=tiny_bert_dir, tasks=("sst2",), data_dir=str(tmp_path / "nowhere"),
                     output=str(tmp_path / "out"), backend="sequential")
    with pytest.raises(DesignSpaceError, match="nowhere/SST-2"):
        Refiner(exp, log=lambda m: None).run()
    assert not (tmp_path / "out").exists()
    # A 4-layer model with a 5-group space: refused before training anything (it failed after trials).
    deep = Experiment(name="deep", backbone=tiny_bert_dir, tasks=("sst2",), output=str(tmp_path / "out2"),
                      space=DesignSpace(n_groups=5), backend="sequential")
    with pytest.raises(DesignSpaceError, match="4 layers, fewer than the space's n_groups=5"):
        Refiner(deep, log=lambda m: None).run()
    assert not (tmp_path / "out2").exists()
    unknown = Experiment(name="u", backbone="minilm-l12", tasks=("sst2",), output=str(tmp_path / "out3"))
    with pytest.raises(DesignSpaceError, match="'minilm-l12' is not a short name"):
        Refiner(unknown, log=lambda m: None).run()
    assert not (tmp_path / "out3").exists()


def test_a_refinement_that_trains_a_tiny_model_runs_and_resumes(tmp_path, tiny_bert_dir, glue_root):
    exp = Experiment(
        name="tiny", backbone=tiny_bert_dir, tasks=("sst2",), budget=0.05, selection=64,
        regime=Regime(n_train=32, n_dev=32, batch_size=16, max_length=32),
        space=DesignSpace(n_groups=2, groupings=("increasing", "decreasing"), allocations=("uniform",),
                          tuned_groups=((1, 2),), strategy_pool=("lora",)),
        stages=("grouping",), blocks=2, max_rounds=1, backend="sequential", output=str(tmp_path / "out"),
    )
    store = TrialStore(exp.store_path)
    design = Refiner(exp, store=store, log=lambda m: None, progress=False).run()
    assert design.grouping in ("increasing", "decreasing") and (tmp_path / "out" / "design.yaml").is_file()
    records = store.records()
    assert len(records) == 4 and all(r.ok and r.spec.eval_split == "select" and r.n_eval == 64 for r in records)
    assert all(len(r.predictions) == 64 for r in records)
    Refiner(exp, store=store, log=lambda m: None, progress=False).run()
    assert len(store.records()) == 4


def test_choices_with_one_partition_are_one_choice(tmp_path, tiny_bert_dir):
    """4 layers in 4 groups: spindle and uniform are both 1/1/1/1; the stage has nothing to compare."""
    exp = Experiment(name="same", backbone=tiny_bert_dir, tasks=("sst2",), stages=("grouping",),
                     space=DesignSpace(groupings=("spindle", "uniform")), output=str(tmp_path / "o"),
                     backend="sequential")
    run(exp)
    (state,) = load_states(TrialStore(exp.store_path))
    assert state.status == "skipped" and state.labels == ["spindle=uniform"] and not TrialStore(exp.store_path).records()


def test_replicate_seeds_are_averaged_and_stages_never_share_a_trial(tmp_path):
    """A stage's winner used to re-enter the next stage with the same (selected, lucky) score, and
    extra seeds were never averaged into a design's score."""
    from designspace.stage import design_score

    exp = synthetic(tmp_path, seeds_per_design=2, stages=["grouping", "allocation"])
    run(exp)
    store = TrialStore(exp.store_path)
    by_stage: dict[str, set] = {}
    for r in store.records():
        by_stage.setdefault(r.spec.label.split("/")[0], set()).add(r.key)
    assert len(by_stage) == 2 and not set.intersection(*by_stage.values())
    (state, _) = load_states(store)
    block = state.rounds[0].blocks[0]
    seeds = {r.spec.seed for r in store.records() if r.spec.label.startswith(state.name)
             and r.spec.design.to_dict() | {"grouping": "x"} == Design.from_dict(block.base).to_dict() | {"grouping": "x"}}
    assert {block.seed, block.seed + 7919} <= seeds
    two = [r for r in store.records() if r.spec.label == f"{state.name}/spindle" and r.spec.seed in
           (block.seed, block.seed + 7919) and r.spec.design.allocation == block.base["allocation"]
           and r.spec.design.tuned_groups == tuple(block.base["tuned_groups"])]
    assert len(two) == 2 and design_score(two) == sum(100 * r.score for r in two) / 2


def test_auto_sizes_rounds_from_the_measured_paired_noise(tmp_path):
    exp = synthetic(tmp_path, blocks="auto", resolution=0.8, max_blocks=40, stages=["grouping", "allocation"])
    run(exp)
    states = load_states(TrialStore(exp.store_path))
    assert states[0].sizing[0].startswith("auto: a pilot of 4 blocks")  # nothing measured yet
    measured = states[0].verdicts[-1]["resid_sd"]
    assert states[1].sizing[0].startswith(f"auto: paired sd {measured:.2f}")  # the next stage uses it
    assert sum(len(r.blocks) for r in states[0].rounds) <= 40


def test_an_existing_file_as_output_is_one_line(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    exp = synthetic(tmp_path, output=str(target))
    with pytest.raises(DesignSpaceError, match="file.txt.*is a file") as e:
        run(exp)
    assert "\n" not in str(e.value) and target.read_text() == "not a folder"


def test_packing_changes_speed_not_results(tmp_path):
    one = synthetic(tmp_path, "one", stages=["grouping", "allocation"])
    three = synthetic(tmp_path, "three", stages=["grouping", "allocation"], pack=3)
    assert run(one) == run(three)
    a = {r.key: r.score for r in TrialStore(one.store_path).records()}
    b = {r.key: r.score for r in TrialStore(three.store_path).records()}
    assert a == b


def test_a_choice_whose_designs_all_fail_is_listed_and_the_rest_decide(tmp_path):
    exp = synthetic(tmp_path, stages=["grouping"])
    refiner = Refiner(exp, log=lambda m: None, progress=False)

    class Failing(type(refiner.scorer)):
        def __call__(self, spec):
            if spec.design.grouping == "increasing":
                from designspace.trial import Status, TrialRecord

                return TrialRecord(spec, Status.FAILED, error="RuntimeError: out of memory (synthetic)")
            return super().__call__(spec)

    refiner.scorer = Failing(**{k: getattr(refiner.scorer, k) for k in ("effects", "noise_sd")})
    refiner.run()
    (state,) = load_states(TrialStore(exp.store_path))
    assert state.decided and "increasing" not in state.kept
    report = render(exp, TrialStore(exp.store_path))
    assert "trial(s) failed, left out of the table; first error: RuntimeError: out of memory" in report
    assert "No trial finished ok for: increasing" in report


def test_report_gives_each_tasks_paired_noise_where_tasks_are_averaged(tmp_path):
    """A task that swings far more than another dominates the average: the report says which."""
    exp = synthetic(tmp_path, tasks=["sst2", "stsb"], stages=["grouping"], blocks=6, max_rounds=1,
                    scorer={"effects": TRUTH, "noise_sd": 0.5, "task_noise": {"stsb": 8.0}, "n_layers": 6})
    run(exp)
    line = next(x for x in render(exp, TrialStore(exp.store_path)).splitlines() if x.startswith("Paired noise of each"))
    sd = {part.split()[0]: float(part.split()[1]) for part in line.split(": ", 1)[1].rstrip(".").split("; ")}
    assert sd["sst2"] < 1.0 < 4.0 < sd["stsb"], line
    one = synthetic(tmp_path, name="one", stages=["grouping"], blocks=6, max_rounds=1)
    run(one)
    assert "Paired noise of each" not in render(one, TrialStore(one.store_path))


def test_report_exports_every_trial_as_csv(tmp_path):
    import csv

    from designspace.report import write_report

    exp = synthetic(tmp_path, stages=["grouping"], blocks=4, max_rounds=1)
    run(exp)
    write_report(exp)
    rows = list(csv.DictReader((exp.out_dir / "trials.csv").open()))
    assert len(rows) == len(TrialStore(exp.store_path).records()) == 16
    assert {"key", "design", "seed", "score", "status"} <= set(rows[0])
