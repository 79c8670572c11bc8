"""Progress of long work: how much is done, the rate since the first unit (so that compilation
does not count), and the ETA. Training logs it every `training.log_every` steps; evaluation and
prediction print it at most every few seconds."""
import time


class Progress:
    """Counts units of work (steps, examples) out of `total`, from `start`.

    `update(done)` records the units completed so far; the first call starts the clock (its
    units, e.g. the compiled first step or batch, are not in the rate). `due(seconds)` says
    whether a line is due (then marks it printed); `describe(scale, unit)` is the rate and ETA,
    e.g. "39.6 img/s  ETA 4m12s" (`scale`: units of `unit` per unit of work, e.g. the batch)."""

    def __init__(self, total: int, start: int = 0, clock=time.perf_counter):
        self.total, self.done, self._clock = total, start, clock
        self._began = clock()
        self._first: tuple[float, int] | None = None
        self._last_line = -float("inf")

    def update(self, done: int) -> None:
        self.done = done
        if self._first is None:
            self._first = (self._clock(), done)

    def rate(self) -> float | None:
        """Units per second since the first update; None before a second update."""
        if self._first is None or self.done <= self._first[1]:
            return None
        return (self.done - self._first[1]) / max(self._clock() - self._first[0], 1e-9)

    def due(self, seconds: float) -> bool:
        now = self._clock()
        if now - self._last_line < seconds and self.done < self.total:
            return False
        self._last_line = now
        return True

    def describe(self, scale: float = 1.0, unit: str = "img/s") -> str:
        rate = self.rate()
        if rate is None:
            return f"first batch (compiling) {self._clock() - self._began:.1f}s"
        eta = int((self.total - self.done) / max(rate, 1e-9))
        return f"{rate * scale:.1f} {unit}  ETA {eta // 60}m{eta % 60:02d}s"
