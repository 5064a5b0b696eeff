"""Where a study lives, and the locks that keep several workers from stepping on each other.

- Default: an Optuna journal file, `runs/sweeps/<study>/journal.log` (one machine, any number
  of processes; optuna-dashboard opens it directly).
- `postgresql://user:pass@host/db`: Optuna's RDB storage, for many machines sharing one study.

Optuna 5.0 gives heartbeats (detecting a worker killed mid-trial) to RDBStorage only, so
`HeartbeatJournalStorage` adds the same protocol to the journal file. Either way a dead
worker's trial is failed after `grace_period` and re-queued by Optuna's
`RetryHeartbeatStaleTrialCallback`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError
from tiframework.sweeps.schema import OBJECTIVES, SweepConfig
from tiframework.yamltree import flatten

HEARTBEAT_ATTR = "tif_heartbeat"
SIGNATURE_ATTR = "tif_sweep"
_RDB_URL = re.compile(r"^(postgres(ql)?|mysql|sqlite)(\+\w+)?://")
# Settings that do not change what a trial measures, so a resumed study may differ in them.
_SIGNATURE_SKIP = ("logging", "data.cache_dir", "data.num_workers")


@dataclass(frozen=True)
class StudyLocation:
    """A journal file, or an SQLAlchemy URL (PostgreSQL for several machines)."""

    journal: Path | None = None
    url: str | None = None

    def describe(self) -> str:
        if self.journal is not None:
            return str(self.journal)
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url or "")  # never print a password

    @property
    def is_postgres(self) -> bool:
        return bool(self.url and self.url.startswith("postgresql"))


def with_postgres_driver(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg2://` when only psycopg2 is installed.

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, while we depend on
    psycopg2-binary; an explicit `postgresql+driver://` is left alone.
    """
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def locate(storage: str | None, default_dir: Path) -> StudyLocation:
    """`None` -> `<default_dir>/journal.log`; a URL -> RDB; a folder or file -> that journal."""
    if storage is None:
        return StudyLocation(journal=default_dir / "journal.log")
    if _RDB_URL.match(storage):
        # SQLAlchemy 2 refuses the `postgres://` spelling that Heroku-style URLs use.
        return StudyLocation(url=with_postgres_driver(re.sub(r"^postgres://", "postgresql://", storage)))
    path = Path(storage).expanduser()
    return StudyLocation(journal=path / "journal.log" if path.is_dir() else path)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal-file storage that speaks Optuna's heartbeat protocol.

    `study.optimize` runs a thread that calls `record_heartbeat` every `interval` seconds
    during each trial, and calls `fail_stale_trials` before asking for a new trial; here a
    heartbeat is a timestamp system attribute. Timestamps are compared with this machine's
    clock, which is right for the one-machine use the journal file is for.
    """

    def __init__(self, backend: JournalFileBackend, interval: int | None, grace: int | None,
                 callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self._interval, self._callback = interval, callback
        self._grace = grace or 2 * (interval or 0)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried trial inherits its predecessor's old heartbeat: its own start counts too.
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - max(t.system_attrs.get(HEARTBEAT_ATTR, 0.0), started) > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._callback


def open_storage(loc: StudyLocation, sweep: SweepConfig | None = None, *, create: bool = True) -> BaseStorage:
    """Open the study storage; heartbeats and retries come from `sweep` (None: read-only use).

    An unreachable server or an unwritable folder is one UserError, before any trial starts.
    """
    interval = sweep.heartbeat_interval if sweep else None
    grace = sweep.grace_period if sweep else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=sweep.max_retry) if sweep else None
    if loc.journal is not None:
        if not create and not loc.journal.is_file():
            raise UserError(f"{loc.journal}: no sweep journal here; give the study folder or its journal.log")
        try:
            loc.journal.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(loc.journal))  # the default lock, as optuna-dashboard uses
        except OSError as exc:
            raise UserError(f"{loc.journal}: cannot create the sweep journal ({exc.strerror})") from None
        return HeartbeatJournalStorage(backend, interval, grace, retry)
    # A dead host must fail fast instead of hanging on TCP for minutes.
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if loc.is_postgres else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(loc.url or "", engine_kwargs=engine_kwargs, heartbeat_interval=interval,
                              grace_period=grace, heartbeat_stale_trial_callback=retry)
    except Exception as exc:  # sqlalchemy's OperationalError/ArgumentError, a missing driver, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--storage {loc.describe()}: cannot open the study storage ({first}); check the URL, "
                        "that the server is running and reachable, and the user's password") from None


# --- one study per sweep, and the same sweep every time -------------------------------------


def signature(sweep: SweepConfig, base: ExperimentConfig) -> dict[str, Any]:
    """What a study's trials measure: stored on the study, compared when it is reused."""
    flat = flatten(base.model_dump(mode="json"))
    flat = {k: v for k, v in flat.items() if not k.startswith(_SIGNATURE_SKIP)}
    sig = {"space": {k: p.model_dump(mode="json") for k, p in sweep.space.items()},
           "objective": sweep.objective, "directions": sweep.directions, "seeds": sweep.seeds, "base": flat}
    if sweep.arms:  # absent for searches, so studies made before arms existed still match
        sig["arms"] = sweep.arms
    return json.loads(json.dumps(sig, sort_keys=True))  # the form it has after a round trip through storage


def _differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    out = [f"{part} (was {json.dumps(have.get(part))}, now {json.dumps(want.get(part))})"
           for part in ("space", "arms", "objective", "directions", "seeds") if have.get(part) != want.get(part)]
    old, new = have.get("base", {}), want["base"]
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if keys:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
        out.append(f"base experiment ({shown}{', ...' if len(keys) > 4 else ''})")
    return out


def create_study(sweep: SweepConfig, base: ExperimentConfig, storage: BaseStorage, name: str,
                 loc: StudyLocation) -> optuna.Study:
    """Create the study, or reuse it if it holds the same sweep; a different sweep is a UserError."""
    study = optuna.create_study(study_name=name, storage=storage, directions=sweep.directions,
                                load_if_exists=True)
    want = signature(sweep, base)
    have = study.user_attrs.get(SIGNATURE_ATTR)
    if have is None and [d.name.lower() for d in study.directions] == sweep.directions:
        study.set_user_attr(SIGNATURE_ATTR, want)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(OBJECTIVES[sweep.objective])  # named axes in optuna-dashboard
        return study
    diffs = _differences(have or {}, want) if have else ["objective directions (a study not made by this sweep)"]
    if diffs:
        raise UserError(f"study {name!r} in {loc.describe()} already exists with a different "
                        f"{'; '.join(diffs)}. Use --study-name NEW for a new study, or --fresh to move the old "
                        "one aside and start over")
    return study


def move_aside(loc: StudyLocation, folder: Path, name: str) -> list[str]:
    """Start a study over without deleting anything (`sweep --fresh`); returns what moved where.

    The default layout (the journal inside the study folder) moves as one folder to
    `<study>-old-<time>`. A shared storage (PostgreSQL, a journal elsewhere) gets a copy of
    the study under that name before the original is removed, and the run folders move too.
    """
    aside = f"{name}-old-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    moved: list[str] = []
    in_folder = loc.journal is not None and loc.journal.parent.resolve() == folder.resolve()
    if not in_folder:
        storage = open_storage(loc)
        if name in optuna.study.get_all_study_names(storage):
            optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=aside)
            optuna.delete_study(study_name=name, storage=storage)
            moved.append(f"study {name!r} -> {aside!r} in {loc.describe()}")
    if folder.exists():
        target = folder.with_name(aside)
        os.replace(folder, target)
        moved.append(f"{folder} -> {target}")
    return moved


# --- exact trial counts with several workers ------------------------------------------------


class TrialGate:
    """Makes 'count the trials, then ask for one' atomic across workers.

    Optuna's MaxTrialsCallback counts finished trials after each one, so K workers can
    overshoot by K-1 trials. A worker holds the gate from counting until its new trial
    exists (the objective releases it first thing), so the total is exact. The lock dies
    with its holder (flock, or the PostgreSQL session), so a killed worker never blocks.
    """

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> TrialGate:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileGate(TrialGate):
    """flock on a file beside the journal: one machine."""

    def __init__(self, path: Path) -> None:
        self.path, self._fd = path, None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class PostgresGate(TrialGate):
    """A PostgreSQL advisory lock keyed by the study name: every machine sharing the study."""

    def __init__(self, url: str, study: str) -> None:
        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                connect_args={"connect_timeout": 10})
        # pg advisory keys are signed 64-bit integers.
        self._key = int.from_bytes(hashlib.sha1(f"tiframework-sweep:{study}".encode()).digest()[:8], "big",
                                   signed=True)
        self._conn = None

    def acquire(self) -> None:
        # A short-lived autocommit session: no idle transaction, and the lock goes if we die.
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing the session releases the lock anyway
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            conn.close()


def open_gate(loc: StudyLocation, folder: Path, study: str) -> TrialGate:
    if loc.is_postgres:
        return PostgresGate(loc.url or "", study)
    # Journal files and SQLite are one-machine storages: a lock file beside the study is enough.
    where = loc.journal.parent if loc.journal is not None else folder
    return FileGate(where / f".{study}.gate.lock")
