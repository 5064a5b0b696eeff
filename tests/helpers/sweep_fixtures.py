"""Sweep test helpers: cheap runners (no model, no training), a tiny experiment and sweep files,
reading a study back, and killing a worker mid-trial. Used by every tests/sweeps/ file.

Spawned workers import the runners from this module by name, so keep its top-level imports light.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

FIDELITY, FLEXIBILITY = "eval/clip_fidelity", "eval/clip_flexibility"


# --- cheap runners (the worker's test hook: load the model, run one configuration) -------------


class FakeRunner:
    """Scores from a formula of the config: higher VPT and later steps score better."""

    delay = 0.0

    def load(self, model: Any) -> None:
        return None

    def run(self, cfg: Any, parts: Any, on_eval: Any) -> dict[str, Any]:
        run_dir = Path(cfg.logging.runs_dir) / cfg.logging.experiment / cfg.logging.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
        last = None
        for step in range(0, cfg.training.max_steps + 1, cfg.eval.every):
            time.sleep(self.delay)
            fid = 0.5 + 0.01 * cfg.embedding.vectors_per_token + 0.001 * step + 0.0001 * cfg.training.seed
            last = {"step": step, FIDELITY: fid, FLEXIBILITY: 0.3}
            on_eval(last)
        return {"run_dir": str(run_dir), "final_step": cfg.training.max_steps, "stopped": None,
                "best_step": last["step"], "best_score": last[FIDELITY], "plateau_step": None}


class TwoWorkerRunner(FakeRunner):
    """Slow enough to overlap, and each worker waits for the other before its first trial."""

    delay = 0.2

    def load(self, model: Any) -> None:
        barrier = Path(os.environ["TIF_TEST_BARRIER"])
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)


class FlakyRunner(FakeRunner):
    """Trial 0 raises (a bug), trial 1 stops on NaN like `train` does, later trials succeed."""

    def run(self, cfg: Any, parts: Any, on_eval: Any) -> dict[str, Any]:
        if cfg.logging.run_id.startswith("trial-0"):
            raise RuntimeError("CUDA out of memory (simulated)")
        summary = super().run(cfg, parts, on_eval)
        if cfg.logging.run_id.startswith("trial-1"):
            summary["stopped"] = "non-finite loss at step 3"
        return summary


class SleepyRunner(FakeRunner):
    """Hangs mid-trial (after announcing itself), so a test can kill its worker."""

    def run(self, cfg: Any, parts: Any, on_eval: Any) -> dict[str, Any]:
        marker = Path(cfg.logging.runs_dir) / "sleeping"  # runs_dir: <runs>/sweeps
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        time.sleep(600)
        raise AssertionError("should have been killed")


# --- fixtures -------------------------------------------------------------------------------------


def write_experiment(root: Path) -> Path:
    """A tiny CPU experiment with evaluation every 2 steps (tif-tiny-clip: random weights)."""
    from runs import make_dataset

    data, ref = make_dataset(root / "data"), make_dataset(root / "ref", n=2, caption=None)
    exp = {
        "model": {"preset": "tiny"},
        "data": {"path": str(data), "max_side": 32, "cache_dir": str(root / "cache")},
        "embedding": {"name": "zorbina", "init_text": "red", "vectors_per_token": 2},
        "training": {"learning_rate": "0.02", "max_steps": 4, "save_every": 0},
        "preview": {"every": 0},
        "eval": {"every": 2, "reference": str(ref), "clip_model": "tif-tiny-clip", "steps": 2, "seeds": [0],
                 "prompts": ["[name]"], "flexibility_prompts": ["[name], outdoors"]},
        "logging": {"wandb": False, "progress_bar": False, "runs_dir": str(root / "runs")},
    }
    path = root / "experiments" / "base.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(exp))
    return path


def write_sweep(folder: Path, name: str = "s", **fields: Any) -> Path:
    sweep = {"experiment": "../experiments/base.yaml",
             "space": {"embedding.vectors_per_token": {"type": "categorical", "choices": [1, 2, 3]}},
             "n_trials": 2, "sampler_seed": 0}
    sweep.update(fields)
    path = folder / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def load_study(root: Path, study: str):
    from tiframework.reports.sweep.trials import open_study

    return open_study(str(root / "runs" / "sweeps" / study), study)[0]


def states(study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


RUNNERS = __name__  # spawned workers import the cheap runners from this module by name (tests/helpers is on their path)
FAKE = f"{RUNNERS}:FakeRunner"
VPT = "embedding.vectors_per_token"


def categorical(*choices: Any) -> dict[str, Any]:
    return {"type": "categorical", "choices": list(choices)}


def kill_mid_trial(prepared: Any, marker: Path) -> None:
    """Start a worker whose trial hangs, wait until it is mid-trial, and SIGKILL it."""
    import signal

    from forked import Child

    from tiframework.sweeps.worker import run_worker

    proc = Child(run_worker, prepared.spec, capture=False)  # a process of its own, forked (forked.py)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the sleeping worker never started its trial"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def check_retried(study: Any, n_trials: int) -> None:
    from tiframework.reports.sweep.trials import fail_reason
    from tiframework.sweeps.worker import counted

    trials = sorted(study.get_trials(), key=lambda t: t.number)
    dead = trials[0]
    assert dead.state.name == "FAIL" and "fail_reason" not in dead.user_attrs
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == dead.params
    assert fail_reason(dead, trials) == f"worker died (no heartbeat); retried as trial {retries[0].number}"
    assert [t.state.name for t in trials[1:]] == ["COMPLETE"] * n_trials
    assert counted(trials) == n_trials


class NoisyRunner(FakeRunner):
    """Fidelity with a standard error: VPT 1 is far behind (SE 0.001), VPT 2 a little behind but
    within its large SE (0.05), VPT 3 best; so the noise pruner stops VPT 1 only."""

    def run(self, cfg: Any, parts: Any, on_eval: Any) -> dict[str, Any]:
        rows, summary = self.rows(cfg)
        for row in rows:
            on_eval(row)
        return summary

    def rows(self, cfg: Any) -> tuple[list[dict[str, float]], dict[str, Any]]:
        vpt = cfg.embedding.vectors_per_token
        se, level = {1: 0.001, 2: 0.05, 3: 0.001}.get(vpt, 0.01), {1: 0.3, 2: 0.48, 3: 0.5}.get(vpt, 0.4)
        run_dir = Path(cfg.logging.runs_dir) / cfg.logging.experiment / cfg.logging.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"step": step, FIDELITY: level + 0.001 * step, FIDELITY + "_se": se, FLEXIBILITY: 0.3}
                for step in range(0, cfg.training.max_steps + 1, cfg.eval.every)]
        return rows, {"run_dir": str(run_dir), "final_step": cfg.training.max_steps, "stopped": None,
                      "best_step": cfg.training.max_steps, "best_score": level, "plateau_step": None}


class RollingRunner(NoisyRunner):
    """`run_rolling` without a model: members take turns, one evaluation each, as a population's
    members evaluate at the same steps; a member that leaves hands its place to the next trial.
    Records the most members that were ever running at once (`peak`, in a file beside the runs)."""

    def run_rolling(self, cfgs: list[Any], parts: Any, on_evals: list[Any], on_leave: Any) -> None:
        members = [(i, iter(self.rows(cfg)[0]), cfg) for i, cfg in enumerate(cfgs)]
        on_evals, peak = list(on_evals), len(members)
        while members:
            peak = max(peak, len(members))
            for member in list(members):
                index, rows, cfg = member
                row = next(rows, None)
                if row is not None and not on_evals[index](row):
                    continue
                members.remove(member)
                nxt = on_leave(index, self.rows(cfg)[1], None)
                if nxt is not None:
                    on_evals.append(nxt[1])
                    members.append((len(on_evals) - 1, iter(self.rows(nxt[0])[0]), nxt[0]))
        marker = Path(cfgs[0].logging.runs_dir) / "peak"
        marker.write_text(str(max(peak, int(marker.read_text()) if marker.exists() else 0)))
