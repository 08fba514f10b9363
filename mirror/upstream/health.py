"""An upstream's health: its last answer, its last failure, and the cool-down after failures in a row."""

from __future__ import annotations

import time
from dataclasses import dataclass

FAILURES_BEFORE_COOLDOWN = 3
COOLDOWN = 15.0


@dataclass
class Health:
    """What the dashboard shows of an upstream: its last answer, its last failure, failures in a row."""

    last_success: float | None = None
    last_error: float | None = None
    last_error_message: str | None = None
    last_error_setting: str | None = None  # the setting that fixes the last failure, when one does
    consecutive_failures: int = 0
    # After FAILURES_BEFORE_COOLDOWN failures in a row the upstream is not asked at all until
    # this time (monotonic): requests fail at once, so cached tags are served without waiting
    # for timeouts. The first request after it is a probe.
    down_until: float = 0.0

    def succeeded(self) -> bool:
        """Record an answer; True when it ends a run of failures (worth saying once)."""
        recovered = self.consecutive_failures > 0
        self.last_success = time.time()
        self.consecutive_failures = 0
        self.down_until = 0.0
        return recovered

    def failed(self, message: str, setting: str | None = None) -> bool:
        """Record a failure; True when it is the first of a run, or says something new (worth a WARNING)."""
        news = self.consecutive_failures == 0 or message[:300] != self.last_error_message
        self.last_error = time.time()
        self.last_error_message = message[:300]
        self.last_error_setting = setting
        self.consecutive_failures += 1
        if self.consecutive_failures >= FAILURES_BEFORE_COOLDOWN:
            self.down_until = time.monotonic() + COOLDOWN
        return news

    def cooling_down(self) -> float:
        """Seconds left before the upstream is asked again; 0 when it may be asked now."""
        return max(0.0, self.down_until - time.monotonic())
