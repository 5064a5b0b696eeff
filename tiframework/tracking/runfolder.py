"""The run folder: `runs/<experiment>/<run-id>/`, the local record of a run that needs no cloud.

    config.yaml    the resolved config          metrics.csv   one row per optimizer step
    eval.csv       one row per evaluation       summary.json  best / plateau / final numbers
    eval_per_image.csv   each held-out image's fidelity per evaluation (step, prompt, seed)
    embeddings/    `<name>-<step>.pt` + .safetensors (+ .pt.optim), `<name>.pt` the final one
    previews/      `step-<step>-<k>.png`, `strip-<k>.png`
    eval_images/   `step-<step>.png`: each evaluation's held-out `[name]` images, one row, small
    history/       what a resume or a re-evaluation replaced, one dated folder each
    provenance.json  where the run came from: code version, packages, device, command, data and model hashes
    .lock          held (fcntl) by the one process writing the folder

Every file is written atomically or appended row by row and flushed, so a crash leaves
whole files behind. A folder is written by one run only: a new run claims its folder by
creating it (an existing run id is refused, or moved aside with `fresh`) and holds its lock
until it ends; a resume holds the lock of the folder it continues. Nothing is deleted: a resume cuts the curves back to its step and
moves what lay beyond into `history/`, and `tiframework eval` keeps the results it
replaces there too.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tiframework.config import ExperimentConfig, save_config
from tiframework.errors import UserError
from tiframework.fileio import atomic_path, atomic_write_text
from tiframework.tracking.runlock import RunLock


class RunFolder:
    """Paths and writers of one run folder."""

    METRICS_FIELDS = ["step", "loss", "lr", "vector_norm", "time"]

    def __init__(self, path: Path):
        self.path = Path(path)
        self._metrics: IO[str] | None = None
        self._metrics_writer: Any = None
        self._lock: RunLock | None = None

    @classmethod
    def create(cls, cfg: ExperimentConfig, fresh: bool = False) -> RunFolder:
        """`<runs_dir>/<experiment>/<run_id or timestamp>/`, claimed (created by this run, never an
        existing one) and locked, with its sub-folders; the config saved. `fresh`: an existing
        `logging.run_id` folder is moved aside first (`move_aside`) instead of refused."""
        root = runs_root(cfg)
        check_folder_place(root)
        if cfg.logging.run_id:
            run = root / cfg.logging.run_id
            if fresh and run.exists():
                RunLock(run).probe()
                move_aside(run)
            try:
                run.mkdir(parents=True)
            except FileExistsError:
                raise UserError(taken_message(run)) from None
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run, n = root / stamp, 1
            while not _claimed(run):
                run, n = root / f"{stamp}-{n}", n + 1
        return cls(run).locked().prepare(cfg)

    def locked(self) -> RunFolder:
        """Hold this folder's lock until `close()`; a second process gets a one-line error."""
        self._lock = self._lock or RunLock(self.path).acquire()
        return self

    def prepare(self, cfg: ExperimentConfig) -> RunFolder:
        for sub in (self.embeddings, self.previews):
            sub.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_file)
        return self

    @staticmethod
    def owning(file: Path) -> Path | None:
        """The run folder an embedding file was saved in (`<run>/embeddings/<file>`), or None."""
        file = file.resolve()
        run = file.parent.parent
        return run if file.parent.name == "embeddings" and (run / "config.yaml").is_file() else None

    @staticmethod
    def requested(cfg: ExperimentConfig) -> Path | None:
        """The folder `logging.run_id` asks for, or None when no run id is set."""
        if not cfg.logging.run_id:
            return None
        return (Path(cfg.logging.runs_dir) / (cfg.logging.experiment or "default") / cfg.logging.run_id).resolve()

    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings"

    @property
    def previews(self) -> Path:
        return self.path / "previews"

    @property
    def eval_images(self) -> Path:
        return self.path / "eval_images"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.csv"

    @property
    def per_image_file(self) -> Path:
        return self.path / "eval_per_image.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One metrics.csv row, flushed at once (a crash keeps every finished step)."""
        if self._metrics is None:
            file = self.path / "metrics.csv"
            new = not file.exists()
            self._metrics = file.open("a", newline="", encoding="utf-8")
            self._metrics_writer = csv.DictWriter(self._metrics, fieldnames=self.METRICS_FIELDS)
            if new:
                self._metrics_writer.writeheader()
        self._metrics_writer.writerow(row)
        self._metrics.flush()

    def write_eval(self, rows: list[dict[str, float]]) -> None:
        """The whole eval table, atomically (rows may gain columns as scores appear)."""
        write_csv(self.eval_file, rows)

    def read_eval(self) -> list[dict[str, float]]:
        """The rows of eval.csv ([] without the file), numbers as floats, empty cells left out."""
        if not self.eval_file.is_file():
            return []
        with self.eval_file.open(newline="", encoding="utf-8") as fh:
            return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(fh)]

    def write_per_image(self, records: list[dict[str, Any]]) -> None:
        """eval_per_image.csv, atomically: one row per (evaluation, held-out image)."""
        write_csv(self.per_image_file, records)

    def read_per_image(self) -> list[dict[str, Any]]:
        """The rows of eval_per_image.csv ([] without the file); `step` as int, scores as float."""
        if not self.per_image_file.is_file():
            return []
        with self.per_image_file.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [{k: (v if k == "prompt" else int(float(v)) if k in ("step", "seed") else float(v))
                 for k, v in row.items() if v not in (None, "")} for row in rows]

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    @property
    def provenance_file(self) -> Path:
        return self.path / "provenance.json"

    def write_provenance(self, provenance: dict[str, Any]) -> None:
        """provenance.json (`tracking.provenance`); a resume keeps the one it replaces (`cut_back`)."""
        atomic_write_text(self.provenance_file, json.dumps(provenance, indent=2) + "\n")

    def read_provenance(self) -> dict[str, Any]:
        return json.loads(self.provenance_file.read_text()) if self.provenance_file.is_file() else {}

    def checkpoints(self, name: str) -> list[tuple[int, Path]]:
        """`embeddings/<name>-<step>.pt` files of the run, by step."""
        found = []
        for path in self.embeddings.glob(f"{name}-*.pt"):
            tail = path.stem[len(name) + 1 :]
            if tail.isdigit():
                found.append((int(tail), path))
        return sorted(found)

    def latest_checkpoint(self, name: str) -> Path:
        found = self.checkpoints(name)
        if not found:
            raise UserError(f"{self.embeddings}: no {name}-<step>.pt checkpoint to resume from")
        return found[-1][1]

    def cut_back(self, step: int, name: str) -> tuple[Path, list[dict[str, float]]]:
        """Make the run folder read as if it had stopped at `step`, losing nothing.

        The config, metrics, eval table, vector telemetry, validation losses, summary and provenance are copied to `history/<time>-resumed-at-<step>/`;
        metrics and eval rows past `step` are dropped; checkpoints and previews past `step` move
        into that folder (strips too: they are rebuilt from the previews kept); half-written
        temporary files of a killed run are removed. Returns the history folder and the eval
        rows kept, as numbers.
        """
        history = self.history_dir(f"resumed-at-{step}")
        vectors, validation = self.path / "vectors.csv", self.path / "validation.csv"
        for file in (self.config_file, self.path / "metrics.csv", self.eval_file, self.per_image_file,
                     self.summary_file, self.provenance_file, vectors, validation):
            if file.is_file():
                shutil.copy2(file, history / file.name)
        _keep_rows(self.path / "metrics.csv", step)
        _keep_rows(vectors, step)
        _keep_rows(validation, step - 1)  # the resumed run scores `step` again at its start (the same numbers)
        _keep_rows(self.per_image_file, step)
        kept = [_numbers(row) for row in _keep_rows(self.eval_file, step)]
        _remove_partial_writes(self.path)
        checkpoint = re.compile(rf"{re.escape(name)}-(\d+)\.(pt|safetensors|pt\.optim)")
        for path in sorted(self.embeddings.glob("*")):
            m = checkpoint.fullmatch(path.name)
            if m and int(m[1]) > step:
                _move(path, history / "embeddings")
            elif path.name in (f"{name}.pt", f"{name}.safetensors", f"{name}.pt.optim"):
                (history / "embeddings").mkdir(exist_ok=True)
                shutil.copy2(path, history / "embeddings" / path.name)  # the old final; rewritten at the end
        for path in sorted(self.previews.glob("*.png")):
            m = re.fullmatch(r"step-(\d+)-\d+\.png", path.name)
            if (m and int(m[1]) > step) or path.name.startswith("strip-"):
                _move(path, history / "previews")
        for path in sorted(self.eval_images.glob("step-*.png")):
            m = re.fullmatch(r"step-(\d+)\.png", path.name)
            if m and int(m[1]) > step:
                _move(path, history / "eval_images")
        return history, kept

    def keep_copies(self, reason: str, *paths: Path) -> Path | None:
        """Copy those of `paths` (files or folders) that exist into a new `history/<time>-<reason>/`;
        its path, or None when none exists."""
        present = [p for p in paths if p.exists()]
        if not present:
            return None
        history = self.history_dir(reason)
        for path in present:
            if path.is_dir():
                shutil.copytree(path, history / path.name)
            else:
                shutil.copy2(path, history / path.name)
        return history

    def history_dir(self, reason: str) -> Path:
        """A new `history/<time>-<reason>/` folder for files a later write replaces."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path, n = self.path / "history" / f"{stamp}-{reason}", 1
        while path.exists():
            path, n = self.path / "history" / f"{stamp}-{reason}-{n}", n + 1
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def runs_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.logging.runs_dir) / (cfg.logging.experiment or "default")


def taken_message(run: Path) -> str:
    return (f"{run}: this run id is taken by an earlier run, which is never overwritten; continue it with "
            f"resume={run}, choose a new logging.run_id, or pass --fresh to move the old run aside "
            f"(to .{run.name}.replaced-<time>)")


def check_folder_place(path: Path) -> None:
    """A file where a run folder (or one above it) should be is one clear line, not a traceback."""
    for folder in [path, *path.parents]:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise UserError(f"{folder}: is a file, not a folder, so no run folder can be made under it; "
                                "move the file away or set logging.runs_dir to a folder")
            return


def check_run_target(cfg: ExperimentConfig, continuing: Path | None, fresh: bool) -> None:
    """Before anything loads: the folder this run will write is free (see `RunFolder.create`)."""
    check_folder_place(runs_root(cfg))
    wanted = RunFolder.requested(cfg)
    if continuing is not None and wanted in (None, continuing):
        RunLock(continuing).probe()
    elif wanted is not None and wanted.exists():
        if not fresh:
            raise UserError(taken_message(wanted))
        RunLock(wanted).probe()


def move_aside(run: Path) -> Path:
    """Hide an earlier run as `.<id>.replaced-<time>` beside it (reports skip hidden folders)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    old, n = run.with_name(f".{run.name}.replaced-{stamp}"), 1
    while old.exists():
        old, n = run.with_name(f".{run.name}.replaced-{stamp}-{n}"), n + 1
    run.rename(old)
    return old


def _claimed(run: Path) -> bool:
    """Create `run`; False when it exists (another run of the same second took it first)."""
    try:
        run.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _keep_rows(path: Path, step: int) -> list[dict[str, str]]:
    """Rewrite a per-step CSV with only the rows up to `step`; return those rows."""
    rows = read_csv(path)
    kept = [r for r in rows if (_step_of(r) if _step_of(r) is not None else step + 1) <= step]
    if len(kept) != len(rows):
        fields = list(rows[0]) if rows else []
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
    return kept


def _step_of(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None  # a row cut short by a crash


def _numbers(row: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        if value not in ("", None):
            out[key] = int(float(value)) if key == "step" else float(value)
    return out


def _remove_partial_writes(folder: Path) -> None:
    # `fileio.atomic_path` names its temporary files `.<final name>.<random>.tmp`: one that
    # is still there was being written when the process was killed.
    for sub in (folder, folder / "embeddings", folder / "previews", folder / "eval_images"):
        for tmp in sub.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink()


def _move(path: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path.replace(folder / path.name)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV table atomically, with the union of the rows' keys as columns (in first-seen order)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
