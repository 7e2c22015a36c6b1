"""When to checkpoint: Young/Daly from the measured cost, or the run spec's fixed interval.

Young (1974) / Daly (2006): the interval that minimises expected lost work plus checkpoint
overhead is about sqrt(2 x C x MTBF), C = what one checkpoint costs the training loop.
With a background upload C is the stall, not the upload; but a new checkpoint cannot start
before the previous one is committed, so the interval is never shorter than that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vicuna_cloud.runspec import young_daly_seconds  # noqa: F401  (the one formula)

# Before anything is measured: a conservative guess of what one checkpoint costs the loop.
INITIAL_COST_S = 30.0


@dataclass
class IntervalPolicy:
    """Decides whether a checkpoint is due. Plain config plus the latest measurements."""

    mtbf_s: float = 6 * 3600.0
    interval_seconds: Optional[float] = None   # fixed time interval (run spec override)
    interval_steps: Optional[int] = None       # step-based interval (run spec override)
    measured_stall_s: Optional[float] = None   # training-loop stall of the last checkpoint
    measured_total_s: Optional[float] = None   # start of save to commit, last checkpoint

    @classmethod
    def from_spec(cls, policy) -> "IntervalPolicy":
        """From a vicuna_cloud.runspec.CheckpointPolicy."""
        return cls(mtbf_s=policy.mtbf_hours * 3600.0, interval_seconds=policy.interval_seconds,
                   interval_steps=policy.interval_steps)

    def record(self, stall_s: float, total_s: Optional[float] = None) -> None:
        self.measured_stall_s = stall_s
        if total_s is not None:
            self.measured_total_s = total_s

    def seconds(self) -> float:
        """The time interval in force now (fixed, or Young/Daly from the measurements)."""
        if self.interval_seconds is not None:
            return self.interval_seconds
        cost = self.measured_stall_s if self.measured_stall_s is not None else INITIAL_COST_S
        return max(young_daly_seconds(cost, self.mtbf_s), self.measured_total_s or 0.0)

    def due(self, step: int, last_step: Optional[int], seconds_since_last: float) -> bool:
        """Steps win when set (deterministic across ranks); otherwise elapsed time."""
        if last_step is not None and step <= last_step:
            return False
        if self.interval_steps is not None:
            return step > 0 and step % self.interval_steps == 0
        return seconds_since_last >= self.seconds()
