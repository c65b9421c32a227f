"""`search:` in a job file: a small Ray Tune search over strategy, learning rate and source replay.

Each trial is a Ray Train run on the same cluster as a plain job's (the same worker loop, checkpoints, source
check at every evaluation), launched from a Tune function trainable (Train V2's Tune integration: the trial
reports through `TuneReportCallback`; the trainable itself reserves no CPU, its workers do). Trials run side by
side as far as the cluster's CPUs allow. A trial's score is its best target dev WER among the checkpoints within
the source limit (base source dev WER + max_source_regression); a trial that kept none scores infinity. The best
trial's candidate then goes through the job's evaluate / gate / publish phases like a single run's; every trial
is in the report (`search` in metrics.json, search.png).

The design is deterministic (no random draws): strategies first, so that a 2- or 3-trial search tries each, then
learning-rate multipliers (x1, x1/3, x3 of each strategy's default, or the given rates) and replay shares
alternating.

    trials = design(spec.search, "whisper", spec)      # [{"index", "strategy", "lr", "source_replay"}, ...]
    summary = run_search(job, trials, search, ray_address)   # the best trial's summary + {"search": ...}
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

LR_MULTIPLIERS = (1.0, 1 / 3, 3.0)
TRIALS_DIR = "trials"
SEARCH_RUN = "search"  # the Tune experiment folder in RUN_DIR
# What a trial's Tune trainable reserves: no CPU (its Ray Train workers reserve theirs; a CPU share here would
# keep the last worker of a full cluster from starting), and some memory, since Ray refuses an empty request.
TRIAL_DRIVER = {"cpu": 0, "memory": 64 * 2**20}


def default_strategies(architecture: str) -> list[str]:
    # full fine-tuning of Whisper on CPU takes a trial's whole budget for a few steps: not by default
    return ["head", "adapters"] if architecture == "whisper" else ["adapters", "finetune", "head"]


def design(search, architecture: str, spec) -> list[dict]:
    """The trials of a search (`spec` has its auto settings made concrete: strategy, source_replay)."""
    from speechadapt.training.adapt import default_lr

    strategies = list(search.strategies) or default_strategies(architecture)
    replays = list(search.source_replay) or sorted({spec.source_replay, round(spec.source_replay / 2, 4)}, reverse=True)
    trials = []
    for i in range(search.trials):
        strategy, round_no = strategies[i % len(strategies)], i // len(strategies)
        if search.learning_rates:
            lr = search.learning_rates[round_no % len(search.learning_rates)]
        else:
            lr = spec.learning_rate if spec.learning_rate is not None else default_lr(strategy, architecture)
            lr *= LR_MULTIPLIERS[round_no % len(LR_MULTIPLIERS)]
        trials.append({"index": i, "strategy": strategy, "lr": float(f"{lr:.3g}"),
                       "source_replay": replays[round_no % len(replays)]})
    return trials


def concurrency(search, job, cluster_cpus: float) -> int:
    """Trials at once: the spec's, else as many as the cluster's CPUs hold (at least 1)."""
    if search.concurrent:
        return search.concurrent
    return max(1, int(cluster_cpus // max(1e-6, job.workers * job.cpus_per_worker)))


def trial_minutes(search, job, trials: int, at_once: int) -> float:
    """A trial's training budget: max_minutes, or its share of the search's budget."""
    if not search.budget_minutes:
        return job.max_minutes
    rounds = math.ceil(trials / max(1, at_once))
    return max(0.1, min(job.max_minutes, search.budget_minutes / rounds))


def trial_job(job, trial: dict, run_dir: Path, minutes: float):
    return replace(job, strategy=trial["strategy"], lr=trial["lr"], source_replay=trial["source_replay"],
                   replay_manifest=job.replay_manifest if trial["source_replay"] > 0 else "",
                   run_dir=str(run_dir / TRIALS_DIR / f"{trial['index']:02d}"), max_minutes=minutes,
                   label=f"trial {trial['index'] + 1}: ")


def _trial(config: dict, jobs: list) -> dict:
    """The Tune trainable: one Ray Train run; its summary is written into the trial's run dir."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from speechadapt.training.adapt import SUMMARY_FILE, fit, write_json_atomic

    job = jobs[config["index"]]
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    summary = read_summary(Path(job.run_dir))
    if summary is None:  # a search run again after a stop: finished trials are not trained twice
        summary = fit(job, callbacks=[TuneReportCallback()])
        write_json_atomic(Path(job.run_dir) / SUMMARY_FILE, summary)
    return {"best_dev_wer": finite_best(summary)}


def finite_best(summary: dict) -> float | None:
    """A trial's best target dev WER; None when it kept no checkpoint within the source limit."""
    best = summary.get("best_dev_wer")
    return best if best is not None and math.isfinite(best) else None


def read_summary(trial_dir: Path) -> dict | None:
    from speechadapt.training.adapt import CANDIDATE, SUMMARY_FILE, read_json

    summary = read_json(trial_dir / SUMMARY_FILE)
    return summary if summary is not None and (trial_dir / CANDIDATE / "model.json").is_file() else None


def source_at_best(summary: dict) -> float | None:
    """The source dev WER measured at the trial's best checkpoint (None when not measured)."""
    for h in summary.get("history", []):
        if h.get("event") == "eval" and h.get("step") == summary.get("best_step"):
            return h.get("source_dev_wer")
    return None


def trial_row(trial: dict, summary: dict | None, error: str = "") -> dict:
    row = {**trial, "status": "done" if summary is not None else "failed", "error": error}
    if summary is not None:
        row.update(best_dev_wer=finite_best(summary),
                   source_dev_wer=source_at_best(summary), best_step=summary.get("best_step"),
                   steps=summary.get("steps"), train_seconds=summary.get("train_seconds"),
                   trained_parameters=summary.get("trained_parameters"))
    return row


def best_trial(rows: list[dict]) -> dict | None:
    """The trial with the lowest target dev WER among those that kept a checkpoint within the source limit."""
    scored = [r for r in rows if r["status"] == "done" and r.get("best_dev_wer") is not None]
    return min(scored, key=lambda r: (r["best_dev_wer"], r["index"])) if scored else None


def run_search(job, trials: list[dict], search, ray_address: str | None, emit_note) -> dict:
    """Run the trials with Ray Tune; copy the best trial's candidate to RUN_DIR/candidate; return its summary
    with `search` (the trials' rows, the best index, concurrency, per-trial budget) added."""
    import ray
    from ray import tune

    from speechadapt.training.adapt import CANDIDATE, on_ray

    run_dir = Path(job.run_dir)
    with on_ray(job, ray_address):
        at_once = concurrency(search, job, float(ray.cluster_resources().get("CPU", 1)))
        minutes = trial_minutes(search, job, len(trials), at_once)
        jobs = [trial_job(job, t, run_dir, minutes) for t in trials]
        emit_note(f"search: {len(trials)} trials, {min(at_once, len(trials))} at a time, up to {minutes:g} min of "
                  "training each: " + "; ".join(f"{t['index'] + 1} {t['strategy']} lr {t['lr']:g} replay "
                                                 f"{t['source_replay']:g}" for t in trials))
        shutil.rmtree(run_dir / SEARCH_RUN, ignore_errors=True)  # Tune's bookkeeping; the trials' own runs stay
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, jobs=jobs), TRIAL_DRIVER),
            param_space={"index": tune.grid_search(list(range(len(jobs))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=False,
                                        trial_dirname_creator=lambda t: f"trial-{t.config['index'] + 1:02d}"),
            run_config=tune.RunConfig(name=SEARCH_RUN, storage_path=str(run_dir), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        grid = tuner.fit()
        errors = {}
        for res in grid:
            if res.error is not None and "index" in (res.config or {}):
                errors[jobs[res.config["index"]].run_dir] = f"{type(res.error).__name__}: {str(res.error)[:300]}"
    summaries = [read_summary(Path(j.run_dir)) for j in jobs]
    rows = [trial_row(t, s, errors.get(j.run_dir, "")) for t, s, j in zip(trials, summaries, jobs)]
    best = best_trial(rows)
    if best is None:
        done = [r for r in rows if r["status"] == "done"]
        if not done:
            raise RuntimeError("every search trial failed: " + "; ".join(r["error"] or "no result" for r in rows))
        best = min(done, key=lambda r: r["index"])  # none within the source limit: the gate will say so
    best_dir, summary = Path(jobs[best["index"]].run_dir), summaries[best["index"]]
    tmp = run_dir / f".{CANDIDATE}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(best_dir / CANDIDATE, tmp)
    shutil.rmtree(run_dir / CANDIDATE, ignore_errors=True)
    os.replace(tmp, run_dir / CANDIDATE)
    return {**summary, "search": {"trials": rows, "best": best["index"], "concurrent": at_once,
                                  "trial_minutes": minutes}}


def write_plot(path: Path, rows: list[dict], base_target_wer: float, base_source_wer: float, source_limit: float,
               best: int) -> None:
    """search.png: each trial's target dev WER against its source dev WER, the source limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechadapt.training.adapt import save_png

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    colors = {"head": "tab:blue", "adapters": "tab:green", "finetune": "tab:orange"}
    for r in rows:
        if r.get("best_dev_wer") is None:
            continue
        src = r.get("source_dev_wer")
        x = 100 * src if src is not None else 100 * base_source_wer
        ax.scatter(x, 100 * r["best_dev_wer"], s=120 if r["index"] == best else 50,
                   color=colors.get(r["strategy"], "gray"), edgecolors="black" if r["index"] == best else "none",
                   label=r["strategy"])
        ax.annotate(f"{r['index'] + 1}: lr {r['lr']:g}, replay {r['source_replay']:g}", (x, 100 * r["best_dev_wer"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    if math.isfinite(source_limit):
        ax.axvline(100 * source_limit, color="tab:red", linestyle="--", linewidth=1, label="source limit")
    ax.axhline(100 * base_target_wer, color="gray", linestyle=":", linewidth=1, label="base target dev WER")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), loc="upper right", fontsize=8)
    ax.set_xlabel("source dev WER at the trial's best checkpoint (%)")
    ax.set_ylabel("target dev WER, best checkpoint (%)")
    ax.set_title(f"search: {len(rows)} trials, best {best + 1}")
    save_png(fig, path)
