"""The run folder: `runs/<experiment>/<run-id>/`, the local record of a run that needs no cloud.

    config.yaml    the resolved config          metrics.csv   one row per optimizer step
    eval.csv       one row per evaluation       summary.json  best / plateau / final numbers
    eval_per_image.csv   each held-out image's fidelity per evaluation (step, prompt, seed)
    embeddings/    `<name>-<step>.pt` + .safetensors (+ .pt.optim), `<name>.pt` the final one
    previews/      `step-<step>-<k>.png`, `strip-<k>.png`
    eval_images/   `step-<step>.png`: each evaluation's held-out `[name]` images, one row, small

Every file is written atomically or appended row by row and flushed, so a crash leaves
whole files behind.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tiframework.config import ExperimentConfig, save_config
from tiframework.fileio import atomic_path, atomic_write_text


class RunFolder:
    """Paths and writers of one run folder."""

    METRICS_FIELDS = ["step", "loss", "lr", "vector_norm", "time"]

    def __init__(self, path: Path):
        self.path = Path(path)
        self._metrics: IO[str] | None = None
        self._metrics_writer: Any = None

    @classmethod
    def create(cls, cfg: ExperimentConfig) -> RunFolder:
        """`<runs_dir>/<experiment>/<run_id or timestamp>/` with its sub-folders; the config saved."""
        root = Path(cfg.logging.runs_dir) / (cfg.logging.experiment or "default")
        if cfg.logging.run_id:
            run = root / cfg.logging.run_id
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run, n = root / stamp, 1
            while run.exists():
                run, n = root / f"{stamp}-{n}", n + 1
        folder = cls(run)
        for sub in (folder.embeddings, folder.previews):
            sub.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder.config_file)
        return folder

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

    def checkpoints(self, name: str) -> list[tuple[int, Path]]:
        """`embeddings/<name>-<step>.pt` files of the run, by step."""
        found = []
        for path in self.embeddings.glob(f"{name}-*.pt"):
            tail = path.stem[len(name) + 1 :]
            if tail.isdigit():
                found.append((int(tail), path))
        return sorted(found)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV table atomically, with the union of the rows' keys as columns (in first-seen order)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
