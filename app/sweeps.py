"""Sweeps: searches over job parameters whose trials are ordinary jobs, sampled and pruned by Optuna.

Our tables are the one source of truth for which trials exist. Optuna's study is never stored: each
time a trial is asked for or judged, an in-memory study is rebuilt from the sweep's jobs (their
parameters as sampled, their states, their per-epoch metric, the system attributes samplers and
pruners keep) and the sampler is seeded from the sweep's seed and the trial's number. Asking is
therefore a pure function of what is stored, and each ask happens inside one transaction that holds
the sweep's row: a process killed mid-ask leaves nothing, the next `advance` (by any worker, or the
app) asks again with the same result, and a trial number is given out once (a unique index as well).

Who advances a sweep: the app when it is created or changed, and every worker's slot before it
claims, so neither the app nor any one worker has to be alive.
"""

import json
import logging
import math
import secrets
from functools import lru_cache
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session, col

from app import queue, recipes
from app.db import session_scope
from app.models import (
    ACTIVE_STATUSES, FINISHED_STATUSES, Job, JobMetric, JobStatus, Sweep, SweepPublic, SweepStatus, SweepSummary,
    SweepTrialPublic, as_utc, utcnow,
)
from app.settings import Settings
from app.sweepconfig import SweepConfigError, SweepPlan, plan

log = logging.getLogger("trainboard.sweeps")

MIN_STOP_AFTER_FAILURES = 3  # a sweep stops after max(3, 20% of run_cap) failed trials in a row


class SweepNotFound(LookupError):
    def __init__(self, sweep_id: int):
        super().__init__(f"sweep {sweep_id} not found")


class SweepStateConflict(RuntimeError):
    def __init__(self, message: str):
        super().__init__(message)


def _plan(sweep: Sweep) -> SweepPlan:
    """The stored config's plan. Every slot advances the sweeps before each claim and every trial's
    epoch is judged, so a config is validated once per process, not on each of those."""
    return _plan_of(json.dumps(sweep.config, sort_keys=True))


@lru_cache(maxsize=64)
def _plan_of(config: str) -> SweepPlan:
    return plan(json.loads(config))


def failures_to_stop(run_cap: int) -> int:
    return max(MIN_STOP_AFTER_FAILURES, math.ceil(0.2 * run_cap))


# ---------------------------------------------------------------------------------------------
# Creating, cancelling, advancing
# ---------------------------------------------------------------------------------------------


def create(engine: Engine, settings: Settings, sweep_plan: SweepPlan, config: dict[str, Any], *, owner: str) -> Sweep:
    """Store a validated sweep and queue its first trials."""
    seed = sweep_plan.config.seed if sweep_plan.config.seed is not None else secrets.randbelow(2**32)
    with queue.write_session(engine) as session:
        sweep = Sweep(
            name=sweep_plan.config.name or "", owner=owner, recipe=sweep_plan.recipe.name, method=sweep_plan.config.method,
            metric=sweep_plan.metric,
            goal=sweep_plan.goal, run_cap=sweep_plan.run_cap, parallel=sweep_plan.config.parallel, seed=seed, config=config,
        )
        session.add(sweep)
        session.flush()
        sweep.name = sweep.name or f"sweep-{sweep.id}"
        session.commit()
        session.refresh(sweep)
    log.info("sweep %d (%s) created: %s, %d trials, %d at once", sweep.id, sweep.name, sweep.method, sweep.run_cap, sweep.parallel)
    advance(engine, settings, sweep.id)
    return get(engine, sweep.id)


def get(engine: Engine, sweep_id: int) -> Sweep:
    with session_scope(engine) as session:
        sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def cancel(engine: Engine, sweep_id: int) -> Sweep:
    """Cancel a running sweep: its queued and paused trials end cancelled, its running ones are asked to."""
    with queue.write_session(engine) as session:
        sweep = session.get(Sweep, sweep_id, with_for_update=True)
        if sweep is None:
            raise SweepNotFound(sweep_id)
        if sweep.status != SweepStatus.RUNNING:
            raise SweepStateConflict(f"sweep {sweep_id} is {sweep.status}; cannot cancel it")
        _end(session, sweep, SweepStatus.CANCELLED, "cancelled by request")
        session.commit()
    return get(engine, sweep_id)


def advance(engine: Engine, settings: Settings, sweep_id: int | None = None) -> None:
    """Bring running sweeps (or one) up to date: end those that are done or failing, and queue
    trials until each has `parallel` queued or running, or all `run_cap`."""
    known = list(recipes.registry().recipes)
    with session_scope(engine) as session:
        # A sweep of a recipe this process lacks is left to the app or a worker that has it.
        query = select(Sweep.id).where((Sweep.status == SweepStatus.RUNNING) & col(Sweep.recipe).in_(known))
        if sweep_id is not None:
            query = query.where(Sweep.id == sweep_id)
        ids = list(session.scalars(query))
    for running_id in ids:
        try:
            _advance_one(engine, settings, running_id)
        except (ValidationError, SweepConfigError) as exc:
            # One sweep that cannot go on never holds up the others.
            log.error("sweep %d cannot queue trials: %s", running_id, exc)


def _advance_one(engine: Engine, settings: Settings, sweep_id: int) -> None:
    with queue.write_session(engine) as session:
        sweep = session.get(Sweep, sweep_id, with_for_update=True)
        if sweep is None or sweep.status != SweepStatus.RUNNING:
            return
        sweep_plan = _plan(sweep)
        trials = _trials(session, sweep.id)
        if not _ended(session, sweep, trials):
            active = sum(1 for job in trials if job.status in ACTIVE_STATUSES)
            room = min(sweep.parallel - active, sweep.run_cap - len(trials))
            if room > 0:
                study = _Study(session, sweep, sweep_plan, trials)
                for _ in range(room):
                    trials.append(_add_trial(session, settings, sweep, sweep_plan, study))
        session.commit()


def _ended(session: Session, sweep: Sweep, trials: list[Job]) -> bool:
    """End the sweep when all its trials are done, or too many failed in a row; whether it ended."""
    finished = sorted((job for job in trials if job.status in FINISHED_STATUSES), key=lambda job: (job.finished_at, job.id))
    limit = failures_to_stop(sweep.run_cap)
    streak = 0
    for job in reversed(finished):
        if job.status != JobStatus.FAILED:
            break
        streak += 1
    if streak >= limit:
        last = finished[-1]
        _end(session, sweep, SweepStatus.FAILED, f"stopped after {streak} failed trials in a row; the last, job {last.id}: {last.error or 'failed'}")
        return True
    if len(trials) >= sweep.run_cap and all(job.status in FINISHED_STATUSES for job in trials):
        _end(session, sweep, SweepStatus.FINISHED, None)
        return True
    return False


def _end(session: Session, sweep: Sweep, status: SweepStatus, reason: str | None) -> None:
    sweep.status = status
    sweep.reason = reason
    sweep.finished_at = utcnow()
    if status != SweepStatus.FINISHED:
        why = f"sweep {sweep.id} {'was cancelled' if status == SweepStatus.CANCELLED else 'stopped'}"
        session.execute(
            update(Job).where((Job.sweep_id == sweep.id) & col(Job.status).in_((JobStatus.QUEUED, JobStatus.PAUSED)))
            .values(status=JobStatus.CANCELLED, error=why, finished_at=utcnow(), lease_expires_at=None)
        )
        session.execute(
            update(Job).where((Job.sweep_id == sweep.id) & (Job.status == JobStatus.RUNNING)).values(cancel_requested=True)
        )
        queue.notify(session)
    log.info("sweep %d %s%s", sweep.id, status, f": {reason}" if reason else "")


def _add_trial(session: Session, settings: Settings, sweep: Sweep, sweep_plan: SweepPlan, study: "_Study") -> Job:
    number, sampled, system_attrs = study.ask()
    fields = {**sweep_plan.job_params(sampled), "name": f"{sweep.name}-{number}"}
    columns: dict[str, Any] = {
        "sweep_id": sweep.id, "trial_number": number, "trial": {"params": sampled, "system_attrs": system_attrs, "group": sweep.name},
    }
    recipe = sweep_plan.recipe
    try:
        params = recipe.validate(fields)
    except ValidationError as exc:
        # Fields a JSON schema checks one by one can still clash (nesterov without momentum): the
        # trial is recorded as failed, with the parameters drawn, so the count stays exact.
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        params = recipe.validate({"name": fields["name"]})
        columns.update(status=JobStatus.FAILED, error=f"the sampled parameters are not valid: {reason}"[:2000], finished_at=utcnow())
    job = queue.add_job(
        session, params, default_wandb_mode=settings.wandb_mode, max_attempts=settings.max_attempts, owner=sweep.owner,
        recipe=recipe, **columns,
    )
    if job.status == JobStatus.FAILED:
        job.params = {**job.params, **fields}
    log.info("sweep %d: trial %d queued as job %d", sweep.id, number, job.id)
    return job


def retry(engine: Engine, settings: Settings, job: Job, *, owner: str) -> Job:
    """A failed or cancelled job again, for `owner` (the API's and the page's Retry): a sweep's
    trial in its place in the sweep, any other job as queue.retry makes it."""
    if job.sweep_id is None:
        return queue.retry(engine, job.id, max_attempts=settings.max_attempts, max_queued=settings.max_queued, owner=owner)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise queue.JobStateConflict(job.id, job.status, "retry")
    return _retry_trial(engine, settings, job, owner=owner)


def _retry_trial(engine: Engine, settings: Settings, job: Job, *, owner: str) -> Job:
    """A trial again, as a new job with its number and parameters. A finished or failed sweep
    runs again for it; `parallel` holds."""
    with queue.write_session(engine) as session:
        sweep = session.get(Sweep, job.sweep_id, with_for_update=True)
        if sweep.status == SweepStatus.CANCELLED:
            raise SweepStateConflict(f"sweep {sweep.id} is cancelled; cannot retry its trials")
        trials = _trials(session, sweep.id)
        latest = next((trial for trial in trials if trial.trial_number == job.trial_number), None)
        if latest is None or latest.id != job.id:
            raise SweepStateConflict(f"trial {job.trial_number} of sweep {sweep.id} was retried already, as job {latest.id if latest else '?'}")
        active = sum(1 for trial in trials if trial.status in ACTIVE_STATUSES)
        if active >= sweep.parallel:
            raise SweepStateConflict(
                f"sweep {sweep.id} already has {active} trials queued or running (parallel {sweep.parallel}); retry when one ends"
            )
        try:
            recipe = recipes.registry().get(job.recipe)
            params = recipe.stored_params({**job.params, "name": job.name})
        except (recipes.UnknownRecipe, recipes.RecipeMismatch) as exc:
            raise SweepStateConflict(f"cannot retry trial {job.trial_number} of sweep {sweep.id}: {exc}") from None
        system_attrs = {key: value for key, value in (job.trial or {}).get("system_attrs", {}).items() if not key.startswith("completed_rung_")}
        new = queue.add_job(
            session, params, default_wandb_mode=job.params["wandb_mode"], max_attempts=settings.max_attempts, owner=owner,
            recipe=recipe, retry_of=job.id, sweep_id=sweep.id, trial_number=job.trial_number, trial={**(job.trial or {}), "system_attrs": system_attrs},
        )
        if sweep.status != SweepStatus.RUNNING:
            sweep.status, sweep.reason, sweep.finished_at = SweepStatus.RUNNING, None, None
        session.commit()
        session.refresh(new)
    return new


# ---------------------------------------------------------------------------------------------
# Early termination
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruning:
    rule: str
    epoch: int
    rung: int | None
    value: float | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "epoch": self.epoch, "rung": self.rung, "value": self.value, "message": self.message}


def judge(engine: Engine, claim: queue.Claim) -> Pruning | None:
    """After a trial's epoch is recorded: whether its sweep's early termination stops it now. What
    the pruner notes (the rungs a trial passed) is stored with the trial, fenced on the attempt."""
    with session_scope(engine) as session:
        job = session.get(Job, claim.job_id)
        sweep = session.get(Sweep, claim.sweep_id) if job is not None else None
        if sweep is None or sweep.status != SweepStatus.RUNNING or not sweep.config.get("early_terminate"):
            return None
        sweep_plan = _plan(sweep)
        study = _Study(session, sweep, sweep_plan, _trials(session, sweep.id))
        verdict, system_attrs = study.prune(job)
        trial = {**(job.trial or {}), "system_attrs": system_attrs}
        session.execute(update(Job).where(queue.fence(claim)).values(trial=trial))
        session.commit()
    return verdict


# ---------------------------------------------------------------------------------------------
# The study, rebuilt
# ---------------------------------------------------------------------------------------------


def _trials(session: Session, sweep_id: int) -> list[Job]:
    """The sweep's trials by number: for each, its newest job (a retry replaces the job it retries)."""
    jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_number, Job.id)).all()
    latest: dict[int, Job] = {}
    for job in jobs:
        latest[job.trial_number] = job
    return [latest[number] for number in sorted(latest)]


def epoch_values(session: Session, jobs: list[Job], metric: str) -> dict[int, dict[int, float]]:
    """Each job's metric after each epoch of its current attempt: {job_id: {epoch: value}}."""
    if not jobs:
        return {}
    attempts = {job.id: job.attempts for job in jobs}
    rows = session.execute(
        select(JobMetric.job_id, JobMetric.attempt, JobMetric.step, JobMetric.values)
        .where(col(JobMetric.job_id).in_(list(attempts)) & (JobMetric.kind == "epoch"))
        .order_by(JobMetric.job_id, JobMetric.step)
    )
    found: dict[int, dict[int, float]] = {job_id: {} for job_id in attempts}
    for job_id, attempt, step, values in rows:
        if attempt == attempts[job_id] and metric in values:
            value = values[metric]
            found[job_id][step] = float("nan") if value is None else float(value)
    return found


def trial_value(job: Job, metric: str, per_epoch: dict[int, float]) -> float | None:
    """What the sweep scores a trial by: a finished one's final metric, a pruned one's last epoch's."""
    if job.status == JobStatus.SUCCEEDED:
        value = (job.metrics or {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    if job.status == JobStatus.PRUNED and per_epoch:
        value = per_epoch[max(per_epoch)]
        return value if math.isfinite(value) else None
    return None


class _Study:
    """An Optuna study in memory, holding the sweep's trials as stored."""

    def __init__(self, session: Session, sweep: Sweep, sweep_plan: SweepPlan, trials: list[Job]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.sweep = sweep
        self.plan = sweep_plan
        self.distributions = {d.name: d.distribution() for d in sweep_plan.dimensions}
        self.study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), study_name=f"trainboard-sweep-{sweep.id}",
            direction=sweep_plan.goal, sampler=self._sampler(0), pruner=self._pruner(),
        )
        self.values = epoch_values(session, trials, sweep_plan.metric)
        for job in trials:
            self._add(job)

    def _sampler(self, number: int):
        samplers = self.optuna.samplers
        seed = self.sweep.seed
        if self.plan.config.method == "grid":
            return samplers.GridSampler(self.plan.grid, seed=seed)  # the grid's order is the sweep's seed's
        # Each trial's own seed: asking again after a crash draws the same parameters.
        trial_seed = (seed + number) % 2**32
        if self.plan.config.method == "random":
            return samplers.RandomSampler(seed=trial_seed)
        startup = min(10, max(1, self.sweep.run_cap // 3))
        return samplers.TPESampler(seed=trial_seed, n_startup_trials=startup, constant_liar=True)

    def _pruner(self):
        rule = self.plan.config.early_terminate
        pruners = self.optuna.pruners
        if rule is None:
            return pruners.NopPruner()
        if rule.type == "median":
            return pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=rule.first_epoch - 1)
        epochs = self.plan.fixed.get("epochs")
        return pruners.HyperbandPruner(
            min_resource=rule.first_epoch, max_resource=rule.max_iter or epochs or "auto", reduction_factor=rule.eta,
        )

    def _add(self, job: Job) -> None:
        """Add a stored trial to the study, as Optuna's own storage would hold it."""
        TrialState = self.optuna.trial.TrialState
        per_epoch = self.values.get(job.id, {})
        state = {
            JobStatus.SUCCEEDED: TrialState.COMPLETE, JobStatus.PRUNED: TrialState.PRUNED,
            JobStatus.FAILED: TrialState.FAIL, JobStatus.CANCELLED: TrialState.FAIL,
        }.get(job.status, TrialState.RUNNING)
        value = trial_value(job, self.plan.metric, per_epoch) if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL  # finished without a usable metric (a diverged run)
        system_attrs = dict((job.trial or {}).get("system_attrs", {}))
        if self.plan.config.method == "grid":
            system_attrs["search_space"] = self.plan.grid
        self.study.add_trial(self.optuna.trial.create_trial(
            state=state, value=value, params=(job.trial or {}).get("params", {}), distributions=self.distributions,
            intermediate_values={step: v for step, v in per_epoch.items()}, system_attrs=system_attrs,
        ))

    def ask(self) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """The next trial's number, its parameters as sampled, and the system attributes to keep."""
        number = len(self.study.trials)
        self.study.sampler = self._sampler(number)
        trial = self.study.ask(fixed_distributions=self.distributions)
        # The asked trial stays in the study, running, as the job it becomes.
        return number, trial.params, self._kept_attrs(number)

    def _kept_attrs(self, number: int) -> dict[str, Any]:
        """A trial's system attributes (a grid point's id, the rungs it passed) as the job keeps
        them: without the grid itself, which every trial of the sweep shares."""
        system_attrs = self.study.trials[number].system_attrs
        return {key: value for key, value in system_attrs.items() if key != "search_space"}

    def prune(self, job: Job) -> tuple[Pruning | None, dict[str, Any]]:
        """Whether the pruner stops this running trial at its latest epoch, and its system attributes after."""
        frozen = self.study.trials[job.trial_number]
        # After its last epoch a trial is done: stopping it would save nothing.
        judged = frozen.last_step is not None and frozen.last_step < job.params.get("epochs", math.inf)
        stop = judged and self.study.pruner.prune(self.study, frozen)
        system_attrs = self._kept_attrs(job.trial_number)
        if not stop:
            return None, system_attrs
        epoch = frozen.last_step
        value = frozen.intermediate_values[epoch]
        rule = self.plan.config.early_terminate
        shown = f"{self.plan.metric} {value:.4g}"
        if rule.type == "median":
            return Pruning("median", epoch, None, value, (
                f"pruned by median at epoch {epoch}: {shown} was worse than the median of earlier trials at that epoch"
            )), system_attrs
        rung = sum(1 for key in system_attrs if key.startswith("completed_rung_")) - 1
        return Pruning("hyperband", epoch, rung, value, (
            f"pruned by hyperband at epoch {epoch} (rung {rung}, eta {rule.eta}): {shown} was not in the best 1/{rule.eta} "
            "of the trials that reached this rung"
        )), system_attrs


# ---------------------------------------------------------------------------------------------
# What the API and the pages show
# ---------------------------------------------------------------------------------------------


def list_sweeps(engine: Engine, *, limit: int, offset: int) -> tuple[list[SweepSummary], int]:
    with session_scope(engine) as session:
        total = session.scalar(select(func.count()).select_from(Sweep)) or 0
        found = list(session.scalars(select(Sweep).order_by(col(Sweep.id).desc()).limit(limit).offset(offset)))
        return [_summary(session, sweep)[0] for sweep in found], total


def sweep_view(engine: Engine, sweep_id: int) -> SweepPublic:
    with session_scope(engine) as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            raise SweepNotFound(sweep_id)
        summary, trials = _summary(session, sweep)
    rank = (lambda trial: -trial.value) if sweep.goal == "maximize" else (lambda trial: trial.value)
    ordered = sorted(trials, key=lambda trial: (trial.value is None, rank(trial) if trial.value is not None else 0, trial.trial_number))
    return SweepPublic(**summary.model_dump(), config=sweep.config, jobs=ordered)


def metric_curves(engine: Engine, sweep_id: int) -> dict[int, dict[int, float]]:
    """Each trial's metric after each epoch, {job id: {epoch: value}}: the sweep page's chart."""
    with session_scope(engine) as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            raise SweepNotFound(sweep_id)
        return epoch_values(session, _trials(session, sweep.id), sweep.metric)


def _summary(session: Session, sweep: Sweep) -> tuple[SweepSummary, list[SweepTrialPublic]]:
    jobs = _trials(session, sweep.id)
    values = epoch_values(session, jobs, sweep.metric)
    swept = [name for name in sweep.config.get("parameters", {}) if _is_swept(sweep.config["parameters"][name])]
    trials = [
        SweepTrialPublic(
            id=job.id, trial_number=job.trial_number, status=job.status,
            params={name: job.params.get(name) for name in swept},
            value=trial_value(job, sweep.metric, values.get(job.id, {})),
            epochs_trained=max(values.get(job.id, {}) or [0]),
            pruned_at_epoch=(job.pruned or {}).get("epoch"), wandb_url=job.wandb_url,
        )
        for job in jobs
    ]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    scored = [trial for trial in trials if trial.value is not None and math.isfinite(trial.value)]
    best = (max if sweep.goal == "maximize" else min)(scored, key=lambda trial: trial.value) if scored else None
    summary = SweepSummary(
        id=sweep.id, name=sweep.name, owner=sweep.owner, status=sweep.status, reason=sweep.reason, recipe=sweep.recipe,
        method=sweep.method,
        metric=sweep.metric, goal=sweep.goal, run_cap=sweep.run_cap, parallel=sweep.parallel, seed=sweep.seed,
        counts=counts, trials=len(jobs), best_job_id=best.id if best else None, best_value=best.value if best else None,
        best_params=best.params if best else None, created_at=as_utc(sweep.created_at), finished_at=as_utc(sweep.finished_at),
    )
    return summary, trials


def _is_swept(parameter: Any) -> bool:
    """Whether a config's parameter varies (not a `value` / constant)."""
    return isinstance(parameter, dict) and "value" not in parameter and parameter.get("distribution") != "constant"
