"""Clocks and meters for scripts/benchmark.py: interleaved repeats, the SGEMM peak,
peak RSS, and the machine's name."""
from __future__ import annotations

import platform
import statistics
import time

import numpy as np


# -- memory ---------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- timing ---------------------------------------------------------------------------------
# Pause before every timed repeat. After a call, OpenBLAS's worker threads spin for about
# 0.1 s (2**28 cycles, its default THREAD_TIMEOUT) before they sleep, and PyTorch's OpenMP
# workers spin too; a case timed right after another one lost a core to them. Measured on
# the development VM (2 threads, lenet, batch 64): PyTorch ran at 2,280 img/s right after
# gpucnn's repeat and at 2,850-3,100 img/s after this pause, or with OPENBLAS_THREAD_TIMEOUT=4.
# With the pause every case starts on quiet cores, as it would running alone.
SETTLE_SECONDS = 0.2
# Untimed steps after that pause. On the development VM (KVM) the first one or two steps
# after 0.2 s of idle ran 1.5-2.5x slower than the rest, for gpucnn (simple, batch 64,
# OPENBLAS_THREAD_TIMEOUT=4: 23 and 18 ms, then 9.5-11.7 ms; median of 8 pauses), PyTorch
# less so (21 then 18-20 ms): waking idle cores after a pause is slow on a VM. No epoch has
# such pauses between its steps, so each case runs these steps again after the pause before
# its repeat is timed.
REWARM_STEPS = 2


def measure(cases: dict, mode: str, batch: int, steps: int, warmup: int, repeats: int,
            clock=time.perf_counter, settle: float = SETTLE_SECONDS) -> dict:
    """Median images/s per case; repeats interleaved across the cases, each after a pause
    of ``settle`` seconds (SETTLE_SECONDS) and, when there was one, REWARM_STEPS untimed steps."""
    for case in cases.values():
        getattr(case, f"{mode}_steps")(warmup)
    seconds = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            time.sleep(settle)
            if settle:
                getattr(case, f"{mode}_steps")(REWARM_STEPS)
            start = clock()
            getattr(case, f"{mode}_steps")(steps)
            seconds[name].append(clock() - start)
    return {name: batch * steps / statistics.median(s) for name, s in seconds.items()}


class SgemmPeak:
    """FLOP/s of a 1024x1024 float32 matrix multiply through NumPy's BLAS: the median of
    every timing taken so far. ``measure`` runs before every case, so machine noise during a
    long run spreads over the samples instead of deciding the peak once."""

    SIZE = 1024

    def __init__(self, clock=time.perf_counter):
        self.clock, self.seconds = clock, []
        a = np.random.default_rng(2).random((self.SIZE, self.SIZE), dtype=np.float32)
        self.a, self.b, self.out = a, a.T.copy(), np.empty_like(a)
        np.matmul(self.a, self.b, out=self.out)  # warm-up

    def measure(self, repeats: int) -> None:
        for _ in range(repeats):
            start = self.clock()
            np.matmul(self.a, self.b, out=self.out)
            self.seconds.append(self.clock() - start)

    @property
    def flops(self) -> float:
        return 2 * self.SIZE**3 / statistics.median(self.seconds)


def peak_memory(case, backend_name, steps) -> float | None:
    """Peak RSS (MiB) while the case trains on the CPU; the GPU memory pool's size otherwise."""
    if backend_name == "gpu":
        return case.backend.device_memory_bytes() / 2**20
    if not reset_peak_rss():
        return None
    case.train_steps(steps)
    return peak_rss_mib()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
