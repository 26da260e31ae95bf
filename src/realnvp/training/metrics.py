"""``metrics.csv``: one row per epoch, mirrored to TensorBoard when it is installed, and drawn
as ``curves.png`` (the training and selection columns against the epoch)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .. import atomic


class Metrics:
    """Rows of ``columns`` appended to ``run_dir/metrics.csv`` (each row synced to disk).

    On resume the file is rewritten (atomically) with only the complete rows of epochs up to
    ``last_epoch``, the checkpoint the run continues from. With ``enabled=False`` (ranks other
    than 0) nothing is written.
    """

    def __init__(self, run_dir: Path, columns: list[str], last_epoch: int, enabled: bool,
                 plotted: tuple[str, ...] = ()):
        self.path = Path(run_dir) / "metrics.csv"
        self.columns, self.plotted = columns, plotted
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, columns)
        w.writeheader()
        w.writerows(self._rows_up_to(last_epoch))
        atomic.write_text(self.path, text.getvalue())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:
            self.tb = None

    def _rows_up_to(self, last_epoch: int) -> list[dict]:
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if None not in row.values() and int(row["epoch"]) <= last_epoch:
                            rows.append(row)
                    except (TypeError, ValueError):
                        pass
        return rows

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self._draw()
        if self.tb is not None:
            for key in self.plotted:
                self.tb.add_scalar(key, row[key], row["step"])
            self.tb.flush()

    def _draw(self) -> None:
        from ..viz import line_plot, save

        rows = self._rows_up_to(2**62)
        curves = {key: [(int(r["epoch"]), float(r[key])) for r in rows] for key in self.plotted[:2]}
        save(line_plot(curves), self.path.with_name("curves.png"))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
