"""What a search's confirmation stage found (`tiframework.sweeps.confirm`): the headline of `sweep-report`.

The confirmation study `<study>-confirm` trained the search's top configurations (arms
`trial-<n>`) and the base experiment's settings (arm `baseline`) on fresh seeds. Read from
the study's trials (each arm x seed one trial, its value the run's held-out objective):

- per configuration: the confirmed score, mean and 95% t-interval over the fresh seeds;
- its difference to the baseline: paired t over the shared seeds (Welch when they do not
  all match), with Holm's correction over the K configurations tested against it;
- the winner's curse: the search's score for that configuration minus its confirmed score
  (a search that picks the maximum of noisy trials over-states its winner);
- the plateau step over the seeds that reached one, with its interval, and the count of
  every plateau reason (the plateaus the sweep was launched to find).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tiframework.reports import stats
from tiframework.sweeps import storage as st
from tiframework.sweeps.arms import ARM, SEED
from tiframework.sweeps.confirm import BASELINE, confirm_study_name

EDGE = (0.01, 0.1)  # Holm p in this range: "near 0.05", a re-run could land on the other side


def open_confirm_study(loc: st.StudyLocation, study: str) -> optuna.Study | None:
    """The search's confirmation study: the sibling folder's journal, or the same database; None if absent."""
    name = confirm_study_name(study)
    if loc.journal is not None:
        confirm_loc = st.locate(None, loc.journal.parent.parent / name)
        if not confirm_loc.journal or not confirm_loc.journal.is_file():
            return None
    else:
        confirm_loc = loc
    storage = st.open_storage(confirm_loc, None, create=False)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _per_arm(study: optuna.Study) -> dict[str, dict[int, dict[str, Any]]]:
    """arm -> seed -> that run's recorded numbers (`outcome.seed_result`) plus `value`."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if ARM in t.params and t.value is not None:
            rec = next(iter(t.user_attrs.get("seeds", {}).values()), {})
            out.setdefault(t.params[ARM], {})[int(t.params[SEED])] = dict(rec) | {"value": t.value}
    return out


def _iv(values: list[Any]) -> dict[str, Any] | None:
    iv = stats.mean_interval(values)
    return iv.as_dict() if iv else None


def _vs_baseline(arm: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]]) -> stats.PairTest:
    shared = sorted(arm.keys() & base.keys())
    if shared and len(shared) == len(arm) == len(base):
        return stats.compare_samples([arm[s]["value"] for s in shared], [base[s]["value"] for s in shared], True)
    return stats.compare_samples([r["value"] for r in arm.values()], [r["value"] for r in base.values()], False)


def plateau_summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    steps = [r.get("plateau_step") for r in runs.values()]
    reasons = Counter(r.get("plateau_reason") or ("plateau" if r.get("plateau_step") is not None else "unrecorded")
                      for r in runs.values())
    return {"step": _iv(steps), "reasons": dict(reasons), "n": len(runs)}


def confirmation(search: optuna.Study, loc: st.StudyLocation) -> dict[str, Any] | None:
    """The confirmed answer as plain data (None when the search has no confirmation study)."""
    study = open_confirm_study(loc, search.study_name)
    if study is None:
        return None
    per_arm = _per_arm(study)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_number = {t.number: t for t in search.get_trials(deepcopy=False)}
    configs = []
    for arm, runs in per_arm.items():
        if arm == BASELINE:
            continue
        trial = by_number.get(int(arm.removeprefix("trial-"))) if arm.startswith("trial-") else None
        confirmed = _iv([r["value"] for r in runs.values()])
        search_value = trial.value if trial is not None else None
        configs.append({"arm": arm, "params": dict(trial.params) if trial else {}, "confirmed": confirmed,
                        "seeds": sorted(runs), "search_value": search_value,
                        "curse": None if search_value is None or confirmed is None
                        else search_value - confirmed["mean"], "plateau": plateau_summary(runs)})
    configs.sort(key=lambda c: -(c["confirmed"]["mean"] if maximize else -c["confirmed"]["mean"]))
    base = per_arm.get(BASELINE)
    if base:
        tests = [_vs_baseline(per_arm[c["arm"]], base) for c in configs]
        for c, t, p_adj in zip(configs, tests, stats.holm([t.p for t in tests]), strict=True):
            c["vs_baseline"] = {"diff": t.diff, "ci": None if t.low is None else [t.low, t.high], "p": t.p,
                                "p_holm": p_adj, "test": t.test, "n_tests": len(tests)}
    return {"study": study.study_name, "objective": (search.metric_names or ["value"])[0],
            "direction": "maximize" if maximize else "minimize", "configs": configs,
            "baseline": {"confirmed": _iv([r["value"] for r in base.values()]), "plateau": plateau_summary(base)}
            if base else None, "running": len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _interval_text(iv: dict[str, Any] | None) -> str:
    if not iv:
        return "n/a"
    ci = f" [{_num(iv['ci'][0])}, {_num(iv['ci'][1])}]" if iv.get("ci") else " (one seed: no interval)"
    return f"{_num(iv['mean'])}{ci}"


def _p_text(p: float | None) -> str:
    if p is None:
        return "not tested"
    edge = " (near 0.05: a re-run on other seeds could land on the other side)" if EDGE[0] <= p < EDGE[1] else ""
    return f"Holm p {p:.3g}{edge}"


def _params_text(params: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={value(v)}" for k, v in params.items()) or "no parameters"


def vs_baseline_text(c: dict[str, Any]) -> str:
    vs = c.get("vs_baseline")
    if not vs:
        return "no baseline arm to compare with"
    ci = f" [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]" if vs["ci"] else ""
    if vs["p_holm"] is not None and vs["p_holm"] < stats.ALPHA:
        word = "better than" if (vs["diff"] > 0) == (c.get("direction", "maximize") == "maximize") else "worse than"
    else:
        word = "no detectable difference from"
    return f"{vs['diff']:+.3f}{ci} vs the baseline, {_p_text(vs['p_holm'])}: {word} the baseline"


def headline(result: dict[str, Any]) -> list[str]:
    """The confirmed answer in a few sentences, no stronger than its intervals allow."""
    configs = [c | {"direction": result["direction"]} for c in result["configs"] if c["confirmed"]]
    if not configs:
        return [f"Confirmation study {result['study']}: no finished confirmation run yet."]
    best = configs[0]
    n = len(best["seeds"])
    lines = [f"Confirmed best ({result['study']}, {n} fresh seeds, each on its own eval images): {best['arm']} "
             f"({_params_text(best['params'])}), held-out {result['objective']} {_interval_text(best['confirmed'])} "
             f"(mean, 95% t-interval over seeds); {vs_baseline_text(best)}."]
    if result["baseline"]:
        base = result["baseline"]["confirmed"]
        lines.append(f"Baseline (the base experiment's own settings): {_interval_text(base)}.")
        if base and best["confirmed"] and (base["mean"] > best["confirmed"]["mean"]) == (result["direction"] == "maximize"):
            lines.append("The baseline scored better than every confirmed configuration: at this budget the "
                         "search found nothing better than the base experiment's settings.")
    if len(configs) > 1:
        lines.append("The confirmed configurations' intervals overlap, so their order is not settled."
                     if _overlap(configs) else "The confirmed best's interval clears the others'.")
    curse = [f"{c['arm']} {_num(c['search_value'])} in the search -> {_num(c['confirmed']['mean'])} confirmed "
             f"({c['curse']:+.3f})" for c in configs if c["curse"] is not None]
    if curse:
        lines.append("Winner's curse (search score minus confirmed score; the search reported the best of noisy "
                     "trials): " + "; ".join(curse) + ".")
    if result["running"]:
        lines.append(f"{result['running']} confirmation run(s) still running: these numbers are partial.")
    return lines


def _overlap(configs: list[dict[str, Any]]) -> bool:
    cis = [c["confirmed"]["ci"] for c in configs]
    if any(ci is None for ci in cis):
        return True
    return any(cis[0][0] <= ci[1] and ci[0] <= cis[0][1] for ci in cis[1:])


def confirm_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per confirmed configuration (and the baseline), plateau included."""
    rows = []
    for c in [*result["configs"], *([{"arm": BASELINE, "params": {}, **result["baseline"]}]
                                    if result["baseline"] else [])]:
        plateau = c.get("plateau") or {}
        reasons = ", ".join(f"{n} {r}" for r, n in sorted((plateau.get("reasons") or {}).items()))
        rows.append({"configuration": c["arm"], "parameters": _params_text(c["params"]) if c["params"] else "base",
                     "confirmed": _interval_text(c.get("confirmed")),
                     "search": _num(c.get("search_value")), "winner's curse": _num(c.get("curse")),
                     "vs baseline": vs_baseline_text(c) if c["arm"] != BASELINE else "",
                     "plateau step": _interval_text(plateau.get("step")), "plateau reasons": reasons})
    return rows


def markdown_section(result: dict[str, Any] | None, folder: Path | None = None) -> list[str]:
    if result is None:
        return []
    lines = ["## Confirmed answer", "", *headline(result), ""]
    rows = confirm_rows(result)
    if rows:
        cols = list(rows[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
        lines += ["", "Plateau step: mean and 95% interval over the seeds that reached a plateau; plateau "
                  "reasons count every seed."]
    return lines + [""]
