"""`tiframework compare` on run folders with known numbers: verdicts with the right sign,
identical arms, paired vs Welch, --by and what it refuses to pool, old run folders, sweeps
with arms (journal and folder), the files it writes and its W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from run_folders import ACC, FID, curve_rows, write_run
from runs import QUICKSTART
from tiframework.cli import main
from tiframework.errors import UserError
from tiframework.reports.compare.report import build_comparison, compare
from tiframework.reports.compare.targets import load_runset

VPT = "embedding.vectors_per_token"


def two_arms(root: Path, levels: tuple[float, float], seeds: tuple[list[int], list[int]] = ([0, 1, 2, 3, 4],) * 2,
             contract: bool = True, images: bool = False) -> Path:
    """Runs of VPT 2 and VPT 16 whose fidelity rises by the given levels."""
    for vpt, level, arm_seeds in zip((2, 16), levels, seeds, strict=True):
        for seed in arm_seeds:
            write_run(root / f"vpt{vpt}-seed{seed}", [f"{VPT}={vpt}", f"training.seed={seed}"],
                      curve_rows(level, seed=100 * seed + vpt, contract=contract), images=images)
    return root


def pair(result: dict, metric: str, summary: str) -> dict:
    return next(p for p in result["pairs"] if p["metric"] == metric and p["summary"] == summary)


def test_a_clear_difference_is_detected_with_its_sign(tmp_path):
    result = build_comparison(load_runset([str(two_arms(tmp_path, (0.15, 0.05)))], by=[VPT]))
    assert [a["name"] for a in result["arms"]] == ["vectors_per_token=2", "vectors_per_token=16"]
    fid = pair(result, FID, "final")
    assert fid["test"] == "paired t" and fid["diff"] == pytest.approx(0.10, abs=0.02) and fid["ci"][0] > 0
    assert fid["p_adjusted"] < 0.05 and fid["verdict"] == "vectors_per_token=2 better"
    assert pair(result, ACC, "best")["verdict"] == "vectors_per_token=2 better"
    # Flexibility is pure noise in both arms: not detected, with a power statement.
    flex = pair(result, "eval/clip_flexibility", "final")
    assert flex["verdict"].startswith("no detectable difference (a difference of ") and flex["seeds_needed"] > 5
    # Holm over every test of the report: adjusted p never below the raw one, and in the same order.
    tested = [p for p in result["pairs"] if p["in_family"]]
    # 4 metrics x 2 summaries, but for attribute accuracy at the end: its paired differences are all
    # exactly 0.05 (no spread), reported and left out of the family.
    assert all(p["p_adjusted"] >= p["p"] for p in tested) and len(tested) == 7
    exact = pair(result, ACC, "final")
    assert not exact["in_family"] and exact["verdict"].startswith("vectors_per_token=2 better by exactly 0.05")
    # No run reached a plateau in either arm: reported, but no test for Holm to count.
    plateau = pair(result, "plateau_reached", "plateau")
    assert plateau["p_adjusted"] is None and plateau["verdict"].startswith("no difference: identical in every run")
    # Baselines and gains per arm.
    arm = result["metrics"][FID]["arms"]["vectors_per_token=2"]
    assert arm["baseline"]["mean"] == pytest.approx(0.2) and arm["gain_final"]["mean"] == pytest.approx(0.15, abs=0.02)
    assert [p["step"] for p in arm["curve"]] == [0, 40, 80, 120] and arm["curve"][-1]["n"] == 5
    low, high = arm["curve"][-1]["ci"]
    assert low < arm["curve"][-1]["mean"] < high


def test_identical_arms_give_no_detectable_difference_on_every_metric(tmp_path):
    # Same levels, and noise seeded by the seed alone: every run equals its partner.
    for vpt in (2, 16):
        for seed in range(4):
            write_run(tmp_path / f"v{vpt}-s{seed}", [f"{VPT}={vpt}", f"training.seed={seed}"], curve_rows(0.1, seed))
    result = build_comparison(load_runset([str(tmp_path)], by=[VPT]))
    verdicts = {p["verdict"] for p in result["pairs"]}
    assert verdicts == {"no difference: identical in every run (no spread to test; left out of the Holm family)"}
    assert not any(p["in_family"] for p in result["pairs"]) and result["headline"]


def test_unmatched_seeds_use_welch(tmp_path):
    two_arms(tmp_path, (0.15, 0.05), seeds=([0, 1, 2], [3, 4, 5, 6]))
    result = build_comparison(load_runset([str(tmp_path)], by=[VPT]))
    fid = pair(result, FID, "final")
    assert fid["test"] == "Welch t" and (fid["n_a"], fid["n_b"]) == (3, 4)
    assert fid["effect_size_kind"].startswith("Cohen's d")


def test_runs_that_differ_in_another_setting_are_never_pooled(tmp_path):
    mixed = two_arms(tmp_path / "mixed", (0.1, 0.1), seeds=([0, 1], [0, 1]))
    write_run(mixed / "odd", [f"{VPT}=2", "training.seed=2", "training.learning_rate=0.005"], curve_rows(0.1, 9))
    with pytest.raises(UserError, match=r"cannot be pooled:\n  training\.learning_rate: arm vectors_per_token=2: "
                                        r"0\.005, 0\.02\nadd --by KEY"):
        load_runset([str(mixed)], by=[VPT])
    # Arms that differ in a second key too are compared, and the report names that key.
    confounded = tmp_path / "confounded"
    for seed in (0, 1):
        write_run(confounded / f"a{seed}", [f"{VPT}=2", f"training.seed={seed}"], curve_rows(0.1, seed))
        write_run(confounded / f"b{seed}", [f"{VPT}=16", f"training.seed={seed}", "training.learning_rate=0.005"],
                  curve_rows(0.1, seed))
    result = build_comparison(load_runset([str(confounded)], by=[VPT]))
    assert result["confounders"] == {"training.learning_rate": {"vectors_per_token=2": "0.02",
                                                                "vectors_per_token=16": "0.005"}}
    assert any("the arms also differ in training.learning_rate" in n for n in result["notes"])


def test_bad_targets_are_one_clear_error(tmp_path):
    two_arms(tmp_path, (0.1, 0.1), seeds=([0, 1], [0, 1]))
    with pytest.raises(UserError, match=r"no arms: give --by KEY .*embedding\.vectors_per_token"):
        load_runset([str(tmp_path)])
    with pytest.raises(UserError, match=r"--by embedding\.vpt: not a config key"):
        load_runset([str(tmp_path)], by=["embedding.vpt"])
    with pytest.raises(UserError, match="matches no file"):
        load_runset([str(tmp_path / "nope-*")], by=[VPT])
    with pytest.raises(UserError, match="fewer than two arms"):
        load_runset([str(tmp_path / "vpt2-seed*")], by=[VPT])
    for vpt in range(1, 14):
        write_run(tmp_path / "many" / f"v{vpt}", [f"{VPT}={vpt}", "embedding.init_text=girl"], curve_rows(0.1, 0))
    with pytest.raises(UserError, match=r"13 arms .* would make 78 pairs to test; compare at most 12"):
        load_runset([str(tmp_path / "many")], by=[VPT])


def test_old_run_folders_fall_back_and_say_so(tmp_path):
    two_arms(tmp_path, (0.15, 0.05), contract=False)
    write_run(tmp_path / "crashed", [f"{VPT}=2", "training.seed=9"], curve_rows(0.1, 9))
    (tmp_path / "crashed" / "summary.json").unlink()
    write_run(tmp_path / "nan", [f"{VPT}=16", "training.seed=9"], curve_rows(0.1, 9),
              summary={"stopped": "non-finite loss at step 3"})
    result = build_comparison(load_runset([str(tmp_path / "*")], by=[VPT]))
    notes = "\n".join(result["notes"])
    assert "10 of 10 runs have no selection scores" in notes and "biased upward" in notes
    assert "no per-evaluation standard errors" in notes and "record no plateau_reason" in notes
    assert "crashed left out (unfinished or crashed (no summary.json))" in notes
    assert "nan left out (stopped early: non-finite loss at step 3)" in notes
    assert [a["n"] for a in result["arms"]] == [5, 5]
    # Without selection scores the chosen checkpoint is the held-out argmax (what old runs did).
    seeds = result["metrics"][FID]["arms"]["vectors_per_token=2"]["per_seed"]
    assert all(s["best"] == max(v for _, v in s["curve"]) for s in seeds)


def test_compare_cli_writes_json_markdown_and_html(tmp_path, capsys):
    two_arms(tmp_path / "runs", (0.15, 0.05), images=True)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "runs" / "vpt*"), "--by", VPT, "--out", str(out), "--no-wandb"]) == 0
    printed = capsys.readouterr().out
    assert "CLIP fidelity at the last evaluation" in printed and "vectors_per_token=2 better" in printed
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "report.html", "report.md"]  # no temp files
    data = json.loads((out / "comparison.json").read_text())
    assert {a["name"]: (a["n"], a["overrides"]) for a in data["arms"]} == {
        "vectors_per_token=2": (5, {VPT: 2}), "vectors_per_token=16": (5, {VPT: 16})}
    assert {"diff", "ci", "p", "p_adjusted", "effect_size", "test", "verdict", "seeds_needed"} <= set(data["pairs"][0])
    assert {"mean", "ci", "n"} <= set(data["metrics"][FID]["arms"]["vectors_per_token=2"]["final"])
    md = (out / "report.md").read_text()
    assert md.index("## Verdicts") < md.index("## Arms") and "| CLIP fidelity | at the last evaluation |" in md
    html = (out / "report.html").read_text()
    # per metric: curves, per-seed scores, paired differences; then the plateau
    assert html.count('class="plot"') == int(html.split('data-plot-count="')[1].split('"')[0]) == 4 + 4 + 4 + 1
    assert html.count('<img src="data:image/jpeg;base64,') == 10 * 4  # 10 runs x 4 eval steps
    assert "<script src=" not in html and "cdn.plot.ly" not in html.split("<body")[1]  # nothing to fetch


def test_a_rerun_of_the_same_glob_skips_the_report_folder_it_wrote(tmp_path):
    """`compare "runs/*" --by KEY` writes runs/compare-<key>/; the same command again matches it too."""
    two_arms(tmp_path / "runs", (0.15, 0.05), seeds=([0, 1], [0, 1]))
    for _ in range(2):
        assert main(["compare", str(tmp_path / "runs" / "*"), "--by", VPT, "--no-wandb"]) == 0
    assert (tmp_path / "runs" / "compare-vectors_per_token" / "comparison.json").is_file()


def study_sweep(root: Path, arms: dict) -> Path:
    sweep = {"experiment": str(QUICKSTART), "overrides": {"model.preset": "tiny", "logging.runs_dir": str(root / "runs"),
                                                         "logging.wandb": False},
             "arms": arms, "seeds": [0, 1, 2]}
    path = root / "cmp.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_compare_a_sweep_with_arms_by_folder_journal_and_recorded_arm(tmp_path):
    from tiframework.sweeps.launch import run_sweep

    run_sweep(study_sweep(tmp_path, {"wide": {VPT: 16}, "narrow": {VPT: 2}}), runner="run_folders:FolderRunner",
              progress=False)
    folder = tmp_path / "runs" / "sweeps" / "cmp"
    done = compare([str(folder)], wandb=False)
    assert done.out == folder / "compare" and (done.out / "report.html").is_file()
    arms = done.result["arms"]
    assert [(a["name"], a["overrides"], a["seeds"]) for a in arms] == [
        ("wide", {VPT: 16}, [0, 1, 2]), ("narrow", {VPT: 2}, [0, 1, 2])]  # the sweep file's order
    assert pair(done.result, FID, "final")["verdict"].startswith("wide better") and done.result["group"] == "cmp"
    # The journal file, and the run folders alone (arms from logging.arm), give the same numbers.
    again = build_comparison(load_runset([str(folder / "journal.log")]))
    loose = build_comparison(load_runset([str(folder / "wide"), str(folder / "narrow")]))
    for other in (again, loose):
        assert pair(other, FID, "final")["diff"] == pytest.approx(pair(done.result, FID, "final")["diff"])
    assert {a["name"]: a["overrides"] for a in loose["arms"]} == {"narrow": {VPT: 2}, "wide": {VPT: 16}}


def test_compare_logs_a_wandb_run_in_the_sweeps_group(tmp_path, monkeypatch):
    from tiframework.sweeps.launch import run_sweep
    from wandb_reader import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_sweep(study_sweep(tmp_path, {"a": {}, "b": {}}), runner="run_folders:FolderRunner", progress=False)
    done = compare([str(tmp_path / "runs" / "sweeps" / "cmp")])
    got = read_run(done.out)
    # Its own group beside the arms' runs (not an arm-less member of theirs), naming the group it compares.
    run = got["run"]
    assert (run.run_group, run.job_type, run.display_name) == ("cmp-compare", "compare", "cmp/compare")
    assert got["config"]["compares_group"] == "cmp"
    assert got["config"]["arms"] == {"a": {}, "b": {}} and got["config"]["n"] == {"a": 3, "b": 3}
    logged = {k: v for row in got["history"] for k, v in row.items()}
    assert logged["compare/verdicts/_type"] == "table-file"
    assert logged["compare/curve-eval-clip-fidelity/_type"] == "plotly-file"
    assert logged["compare/eval_images/a/count"] == 3  # each run's images at its last evaluation
    assert got["summary"]["verdict/clip_fidelity/final/a vs b"].startswith("no difference: identical in every run")
    assert got["summary"]["diff/clip_fidelity/final/a vs b"] == 0
    table = json.loads(next(got["dir"].glob("files/media/table/compare/verdicts*.table.json")).read_text())
    diff = table["columns"].index("diff")
    assert all(isinstance(row[diff], (int, float)) for row in table["data"])  # numbers, not strings


