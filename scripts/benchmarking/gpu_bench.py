"""The GPU side of scripts/benchmark.py: what makes a GPU row comparable with its PyTorch twin.

* TF32 off on both sides: CuPy reads ``CUPY_TF32`` at its first float32 matrix multiply,
  so benchmark.py drops it from the environment at its start (``TF32_ENV``) and
  :func:`cupy_fp32_compute` checks the compute type CuPy then chose; PyTorch gets
  ``torch.backends.cuda.matmul.allow_tf32 = False`` and ``torch.backends.cudnn.allow_tf32
  = False`` (:func:`torch_tf32_off`). ``torch.backends.cudnn.benchmark`` is left at
  PyTorch's default (False) and recorded.
* The GPU's own SGEMM peak (:class:`GpuSgemmPeak`): a 4096x4096 float32 ``matmul`` through
  cuBLAS, synchronised, the best of a few, measured in the same run. GPU rows' "% of SGEMM
  peak" divide by it, CPU rows by the CPU's (:func:`peak_for`).
* Each side's device-memory high-water mark, in MiB: CuPy's memory pool (emptied before
  the case is built, read after its steps: the bytes the pool held, freed blocks kept for
  reuse included) against ``torch.cuda.max_memory_allocated`` (reset before the twin is
  built: the bytes of live tensors, not the caching allocator's reserve, which is
  recorded too).
* The host cost of one CuPy call (:func:`host_costs`): the wall time of a loop of calls
  that never synchronises inside, over the count; what gpu_model.py takes as
  ``--launch-us``.
* The preset ``--gpu-targets`` (:data:`TARGET_CASES`): issue 21's eight cases, each with
  the training ratio (gpucnn img/s / PyTorch img/s) it should reach.

GPU rows are timed with the wall clock, without the CPU's settling pause (that pause lets
idle BLAS threads sleep; a GPU case ends with a synchronisation instead).

On an H200 (CuPy 14.2, torch 2.11+cu130) the whole preset ran in 22 s, 27 s with
``--kernels none all``; one CuPy call cost 10-21 µs of host time (medians of two runs:
14.7 and 10.6 µs).
"""
from __future__ import annotations

import gc
import time

import numpy as np

from gpucnn.nn.layers.scratch import release_shared_scratch

# -- the cases of --gpu-targets ---------------------------------------------------------------
# (arch, batch, target train ratio or None); the schedule is (warm-up steps, steps per repeat,
# repeats), sized so the eight cases and both twins run in well under 90 s on an H200
TARGET_CASES = (("simple", 64, 2.0), ("simple", 1024, 1.0), ("lenet", 64, 2.0), ("lenet", 1024, 1.0),
                ("conv-bn", 64, 1.5), ("conv-bn", 512, 1.0), ("vgg", 128, None), ("vgg", 512, 0.8))
TARGET_SCHEDULE = (5, 20, 5)
HEAVY_SCHEDULE = {("vgg", 512): (2, 10, 3), ("vgg", 128): (3, 10, 5)}
QUICK_SCHEDULE = (1, 2, 2)


def target_plan(quick: bool = False) -> list[tuple[str, int, tuple[int, int, int], float | None]]:
    """[(arch, batch, (warmup, steps, repeats), target)] of --gpu-targets."""
    return [(arch, batch, QUICK_SCHEDULE if quick else HEAVY_SCHEDULE.get((arch, batch), TARGET_SCHEDULE),
             target) for arch, batch, target in TARGET_CASES]


# -- TF32 -------------------------------------------------------------------------------------
def torch_tf32_off(torch) -> dict:
    """TF32 off for PyTorch's matrix multiplies and cuDNN; the settings as recorded."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch_cudnn_benchmark": torch.backends.cudnn.benchmark}


def is_real_gpu(backend) -> bool:
    """A CuPy backend on a device (the tests' stand-in has no memory pool)."""
    return backend.name == "gpu" and backend.device_memory_bytes() is not None


def cupy_fp32_compute(backend) -> str | None:
    """The compute type CuPy's float32 matmul uses ("DEFAULT", not "TF32"); forced back to
    the default (with a printed warning) if it is TF32. None off a real GPU."""
    if not is_real_gpu(backend):
        return None
    linalg = backend.xp._core._routines_linalg
    if linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32:
        print("warning: CuPy chose TF32 for float32 matrix multiplies; setting it back to the default")
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
    return linalg.compute_type_to_str(linalg.get_compute_type(np.float32))


def gpu_name(backend) -> str:
    if not is_real_gpu(backend):
        return f"{backend!r} (no device)"
    name = backend.xp.cuda.runtime.getDeviceProperties(backend.xp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


# -- the twin's device --------------------------------------------------------------------------
def torch_device_for(device: str, torch) -> tuple[str | None, str | None]:
    """(the device the PyTorch twin of a ``device`` row runs on, or None; why not)."""
    if torch is None:
        return None, "no PyTorch twin (--no-torch, --profile, or torch not installed)"
    if device != "gpu":
        return "cpu", None
    if not torch.cuda.is_available():
        return None, (f"torch {torch.__version__} has no usable CUDA device (torch.version.cuda = "
                      f"{torch.version.cuda}): no PyTorch twin on the GPU")
    return "cuda", None


# -- SGEMM peak -----------------------------------------------------------------------------
class GpuSgemmPeak:
    """FLOP/s of a ``size`` x ``size`` float32 matrix multiply through cuBLAS (TF32 off):
    the best of ``repeats`` synchronised timings after one warm-up."""

    def __init__(self, backend, size: int = 4096, repeats: int = 5):
        xp, self.size = backend.xp, size
        a = backend.asarray(np.random.default_rng(2).random((size, size), dtype=np.float32))
        b, out = xp.ascontiguousarray(a.T), xp.empty_like(a)
        xp.matmul(a, b, out=out)  # warm-up: cuBLAS handle and heuristics
        backend.synchronize()
        self.seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            xp.matmul(a, b, out=out)
            backend.synchronize()
            self.seconds.append(time.perf_counter() - start)
        del a, b, out
        free_device_memory(backend)

    @property
    def flops(self) -> float:
        return 2 * self.size**3 / min(self.seconds)


def peak_for(device: str, cpu_flops: float | None, gpu_flops: float | None) -> float | None:
    """The SGEMM peak a row of ``device`` is a share of: the GPU's own for GPU rows (None
    when it was not measured), the CPU's otherwise."""
    return gpu_flops if device == "gpu" else cpu_flops


# -- host cost per call -------------------------------------------------------------------------
HOST_COST_SHAPE = (64, 8, 26, 26)


def host_cost_calls(backend) -> dict:
    """{label: a no-argument call}: a few CuPy operations on a (64, 8, 26, 26) float32 array,
    and one gpucnn RawKernel launch (ReLU backward, gpucnn.backends.kernels.relu)."""
    from gpucnn.backends.kernels.relu import relu_grad
    xp = backend.xp
    data = np.random.default_rng(3)
    a = backend.asarray(data.standard_normal(HOST_COST_SHAPE, dtype=np.float32))
    o = xp.empty_like(a)
    m = backend.asarray(data.standard_normal((256, 256), dtype=np.float32))
    return {"a + 1": lambda: a + 1,
            "cupy.add(a, 1, out=o)": lambda: xp.add(a, 1, out=o),
            "cupy.maximum(a, 0)": lambda: xp.maximum(a, 0),
            "a.sum(axis=0)": lambda: a.sum(axis=0),
            "256^3 matmul": lambda: m @ m,
            "transposing copy": lambda: xp.ascontiguousarray(a.transpose(1, 0, 2, 3)),  # (8, 64, 26, 26)
            "RawKernel launch (relu_grad)": lambda: relu_grad(a, a),
            f"RawKernel x{GRAPH_LAUNCHES} as one CUDA graph launch": graph_of(backend, lambda: relu_grad(a, a))}


GRAPH_LAUNCHES = 30  # about a graphed training step's kernels (lenet: 33 launches eager)


def graph_of(backend, call):
    """``graph.launch`` of a CUDA graph holding GRAPH_LAUNCHES calls of ``call``, recorded as
    gpucnn.backends.cuda_graphs records a step (a non-blocking stream, a private memory pool kept with it)."""
    xp = backend.xp
    stream, pool = xp.cuda.Stream(non_blocking=True), xp.cuda.MemoryPool()
    backend.synchronize()
    with xp.cuda.using_allocator(pool.malloc), stream:
        call()  # compiled and planned before the recording
        stream.begin_capture()
        try:
            for _ in range(GRAPH_LAUNCHES):
                call()
        finally:
            graph = stream.end_capture()
    stream.synchronize()

    def replay():
        graph.launch()  # on the current stream

    replay.pool = pool  # the graph's memory lives as long as the call
    return replay


def host_costs(backend, calls: int = 2000) -> list[dict]:
    """Per call: ``host_us``, the wall time of ``calls`` calls in a loop that never
    synchronises, over ``calls`` (what Python, CuPy and the driver cost the host), and
    ``synced_us``, the same loop up to its synchronisation (the device's work included)."""
    rows = []
    for name, call in host_cost_calls(backend).items():
        for _ in range(10):  # compile, plan, allocate
            call()
        backend.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        host = time.perf_counter() - start
        backend.synchronize()
        synced = time.perf_counter() - start
        rows.append({"call": name, "host_us": host / calls * 1e6, "synced_us": synced / calls * 1e6})
    free_device_memory(backend)
    return rows


def cupy_call_us(rows) -> float:
    """The median host cost of the CuPy calls (not the RawKernel): gpu_model.py's --launch-us."""
    return float(np.median([r["host_us"] for r in rows if not r["call"].startswith("RawKernel")]))


def host_cost_table(rows, calls: int) -> str:
    lines = [f"| call on a {HOST_COST_SHAPE} float32 array | host µs per call (loop of {calls}, "
             "no synchronisation inside) | µs per call up to the synchronisation |", "|---|---|---|"]
    lines += [f"| `{r['call']}` | {r['host_us']:.1f} | {r['synced_us']:.1f} |" for r in rows]
    return "\n".join(lines)


# -- device memory --------------------------------------------------------------------------
def free_device_memory(backend) -> None:
    """Hand the CuPy pool's unused blocks back, so the next case's high-water mark is its own:
    the layers' shared scratch buffers first (gpucnn/nn/layers/scratch.py: they outlive a model,
    and an earlier case's would count in every later one's memory)."""
    if backend.name == "gpu":
        release_shared_scratch(backend.xp)
    if is_real_gpu(backend):
        gc.collect()  # the previous case's arrays, if a reference cycle still holds them
        backend.xp.get_default_memory_pool().free_all_blocks()


def device_peak_mib(backend) -> float | None:
    """The CuPy pool's size (MiB) since :func:`free_device_memory`; None without a device."""
    held = backend.device_memory_bytes()
    return None if held is None else held / 2**20


def live_peak_mib(backend, case, steps: int = 3) -> float | None:
    """The most bytes gpucnn's arrays held at once (MiB) over ``steps`` more training steps of
    ``case`` (rows.GpucnnCase): what torch.cuda.max_memory_allocated counts for PyTorch, where
    :func:`device_peak_mib` (the pool) also counts freed blocks the pool keeps. Counted by a
    CuPy memory hook from the bytes in use when it starts; a recorded step (gpucnn.backends.cuda_graphs)
    counts its whole private pool, which its replays use. None off a real GPU."""
    if not is_real_gpu(backend):
        return None
    cupy = backend.xp

    class LiveBytes(cupy.cuda.MemoryHook):
        name = "gpucnn_live_bytes"

        def __init__(self, live):
            self.live = self.peak = live

        def malloc_postprocess(self, **kwargs):
            self.live += kwargs["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kwargs):
            self.live -= kwargs["mem_size"]

    backend.synchronize()
    graph = getattr(case, "graph", None)
    hook = LiveBytes(cupy.get_default_memory_pool().used_bytes() + (graph.pool_bytes() if graph else 0))
    with hook:
        case.train_steps(steps)
    return hook.peak / 2**20


def torch_reset_peak(torch) -> None:
    """Empty PyTorch's CUDA cache of earlier cases and restart its high-water marks."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def torch_peak_mib(torch) -> dict:
    """PyTorch's CUDA high-water marks since :func:`torch_reset_peak`, MiB."""
    return {"torch_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "torch_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


# -- the GPU table --------------------------------------------------------------------------
def format_cell(value, spec):
    """A table cell: ``value`` formatted by ``spec``, "-" for None (no twin, no peak)."""
    return "-" if value is None else format(value, spec)


def target_met(row) -> str:
    if row.get("target") is None:
        return "-"
    if row.get("train_ratio") is None:
        return f">= {row['target']:.1f} (no ratio)"
    return f">= {row['target']:.1f} {'met' if row['train_ratio'] >= row['target'] else 'MISSED'}"


def gpu_table(rows) -> str:
    """A Markdown table of GPU rows, each beside its PyTorch twin on CUDA."""
    head = ("| network | input | batch | fused kernels | gpucnn train img/s | torch (CUDA) train img/s | "
            "train ratio | target | % of GPU SGEMM peak | gpucnn eval img/s | torch eval img/s | eval ratio | "
            "GPU MiB gpucnn live peak / pool; torch max allocated / reserved |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        fraction = r.get("peak_fraction")
        lines.append(
            f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['batch']} | "
            f"{r.get('kernels_spec') or r.get('kernels') or 'none'}{' + graphs' if r.get('graphs') else ''} | "
            f"{r['train_img_s']:.0f} | {format_cell(r.get('torch_train_img_s'), '.0f')} | {format_cell(r.get('train_ratio'), '.2f')} | "
            f"{target_met(r)} | {format_cell(fraction and 100 * fraction, '.1f')} | {r['eval_img_s']:.0f} | "
            f"{format_cell(r.get('torch_eval_img_s'), '.0f')} | {format_cell(r.get('eval_ratio'), '.2f')} | "
            f"{format_cell(r.get('live_peak_mib'), '.0f')} / {format_cell(r.get('peak_mib'), '.0f')}; "
            f"{format_cell(r.get('torch_peak_mib'), '.0f')} / {format_cell(r.get('torch_reserved_mib'), '.0f')} |")
    return "\n".join(lines)


# -- the run's GPU facts ------------------------------------------------------------------------
def gpu_setup(backend, torch, quick: bool) -> dict:
    """Measured once per run, before the cases: the GPU's SGEMM peak and the host cost of a
    CuPy call; the TF32 settings of both sides. Prints them; returns them for the JSON."""
    calls = 200 if quick else 2000
    info = {"name": gpu_name(backend), "cupy_fp32_compute_type": cupy_fp32_compute(backend),
            "memory": "gpucnn: the most bytes its arrays held at once over 3 more training steps (live_peak_mib, "
                      "a CuPy memory hook) and the CuPy pool's bytes after the case's steps (peak_mib; the pool "
                      "emptied before the case was built); torch: torch.cuda.max_memory_allocated and "
                      "max_memory_reserved (reset before the twin was built)"}
    if torch is not None:
        info.update(torch_tf32_off(torch))
    peak = GpuSgemmPeak(backend, repeats=3 if quick else 10)
    info.update(sgemm_peak_flops=peak.flops, sgemm_size=peak.size, sgemm_seconds=peak.seconds)
    info["host_cost_calls"] = calls
    info["host_cost_per_call"] = host_costs(backend, calls)
    info["cupy_call_us"] = cupy_call_us(info["host_cost_per_call"])
    print(f"GPU: {info['name']}; CuPy float32 matmul compute type: {info['cupy_fp32_compute_type']}; "
          f"torch: TF32 " + ("off for matmul and cuDNN, cudnn.benchmark = "
                             f"{info['torch_cudnn_benchmark']} (PyTorch's default)"
                             if "torch_cudnn_benchmark" in info else "- (no torch)"))
    print(f"GPU SGEMM peak ({peak.size}x{peak.size} float32 matmul through cuBLAS, TF32 off, best of "
          f"{len(peak.seconds)}): {peak.flops / 1e12:.2f} TFLOP/s")
    print(f"\nhost cost of one call, measured here (median of the CuPy calls: {info['cupy_call_us']:.1f} µs; "
          f"scripts/benchmark.py --gpu-model --launch-us {info['cupy_call_us']:.0f}):")
    print(host_cost_table(info["host_cost_per_call"], calls) + "\n", flush=True)
    return info
