"""Fused-kernel group "optimizer" (gpucnn/backends/kernels/optim.py, cuda/optim.cu): SGD and Adam/AdamW
over every parameter in one launch (multi-tensor, through a device table of addresses).
Kernel vs NumPy twin vs the per-tensor array code of gpucnn.optim on the `kernel_backend`
fixture (the stand-in here; a real GPU under .ci/gpu), a model trained on the stand-in with the
group on vs NumPy, the table's re-uploads, launch counts, state_dict round trips.

Exactness: the update is element-wise. The kernel rounds every float32 operation on its own
(__fmul_rn, __fadd_rn, ...: no FMA contraction) in the order of the per-tensor array code, the
twin runs that array code on each work item, and NumPy's float32 operations (sqrt and division
included) are correctly rounded too: all three agree bit for bit, asserted exactly.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from gpucnn.backends.backend import get_backend
from gpucnn.backends.kernels.optim import CHUNK, BiasCorrections, TensorTable, adam_update, grad_layout, sgd_update
from gpucnn.optim import SGD, Adam, AdamW
from standin import standin_backend

# odd sizes, one of several work items (CHUNK = 4096), and a 4-D weight whose gradient comes
# as a transposed view (as Conv2D hands out), read in place by the kernel
SHAPES = [(1,), (3,), (1000,), (4099,), (3, 5, 3, 3), (7, 1300)]
STRIDED = {4}  # indices of SHAPES whose gradients are non-contiguous views

CONFIGS = {
    "sgd": lambda m: SGD(m, 0.1),
    "sgd-wd": lambda m: SGD(m, 0.1, weight_decay=0.05),
    "momentum": lambda m: SGD(m, 0.1, momentum=0.9),
    "nesterov-wd": lambda m: SGD(m, 0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
    "adam": lambda m: Adam(m, 0.01),
    "adam-wd": lambda m: Adam(m, 0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adamw": lambda m: AdamW(m, 0.01),
    "adamw-wd": lambda m: AdamW(m, 0.02, betas=(0.5, 0.9), weight_decay=0.3),
}


class Bag:
    """A model as the optimizers see it: parameters by key on one layer, and a backend."""

    def __init__(self, params: dict, backend):
        self.backend = backend
        self.layer = types.SimpleNamespace(params={k: backend.asarray(v.copy()) for k, v in params.items()},
                                           grads=dict.fromkeys(params))

    def named_parameters(self):
        return [(f"0.{name}", self.layer, name) for name in self.layer.params]

    def set_grads(self, grads: dict):
        """Upload host gradients as NEW device arrays (as the layers' backward makes them);
        the strided ones as transposed views of (reversed-axes) C-contiguous memory."""
        for i, (name, g) in enumerate(grads.items()):
            if i in STRIDED:
                reversed_axes = tuple(range(g.ndim))[::-1]
                self.layer.grads[name] = self.backend.asarray(np.ascontiguousarray(g.transpose(reversed_axes))).transpose(reversed_axes)
            else:
                self.layer.grads[name] = self.backend.asarray(g.copy())

    def host_params(self):
        return {k: self.backend.to_numpy(v) for k, v in self.layer.params.items()}


def host_data(seed=0):
    r = np.random.default_rng(seed)
    params = {f"p{i}": r.standard_normal(s).astype(np.float32) for i, s in enumerate(SHAPES)}
    grads = [{k: r.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
    return params, grads


def assert_same(found: dict, expected: dict, what):
    for key, value in expected.items():
        assert found[key].dtype == np.float32, key
        np.testing.assert_array_equal(found[key], value, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_step_equals_the_per_tensor_code_bit_for_bit(config, kernel_backend):
    """Four steps of fed gradients (new arrays every step, one of them a strided view, the lr
    changed between steps as a schedule does): the one-launch update on the device equals the
    per-tensor NumPy code exactly, parameters and state buffers; one launch a step."""
    params, grads = host_data(1)
    cpu, dev = Bag(params, get_backend("cpu")), Bag(params, kernel_backend)
    opt_cpu, opt_dev = CONFIGS[config](cpu), CONFIGS[config](dev)
    launches = getattr(kernel_backend.xp, "work", None)
    for step, g in enumerate(grads):
        for bag, opt in ((cpu, opt_cpu), (dev, opt_dev)):
            bag.set_grads(g)
            opt.lr *= 0.9 if step else 1.0
            before = launches.launches if launches is not None and bag is dev else 0
            opt.step()
            if launches is not None and bag is dev and step:
                assert launches.launches - before == 1
    assert_same(dev.host_params(), cpu.host_params(), config)
    assert opt_dev.state.keys() == opt_cpu.state.keys()
    for key, buffers in opt_cpu.state.items():
        assert opt_dev.state[key].keys() == buffers.keys()
        assert_same({n: kernel_backend.to_numpy(b) for n, b in opt_dev.state[key].items()}, buffers, key)


@pytest.mark.parametrize("config", ["momentum", "nesterov-wd", "adam-wd", "adamw-wd"])
def test_launcher_on_device_equals_launcher_on_numpy(config, kernel_backend):
    """The launchers themselves, on device arrays (the kernel, or the stand-in's checked twin)
    and on NumPy copies (the twin): equal bit for bit after three steps."""
    params, grads = host_data(2)
    results = []
    for backend in (get_backend("cpu"), kernel_backend):
        xp = backend.xp
        ws = [backend.asarray(v.copy()) for v in params.values()]
        state = [[xp.zeros_like(w) for w in ws] for _ in range(2)]
        table = TensorTable()
        for steps, g in enumerate(grads[:3], start=1):
            gs = [backend.asarray(v.copy()) for v in g.values()]
            if config.startswith("adam"):
                adam_update(table, ws, gs, state[0], state[1], 0.01, (0.8, 0.99), 1e-6, 0.1,
                            config == "adamw-wd", steps)
            else:
                sgd_update(table, ws, gs, state[0], 0.05, 0.8, 1e-2 if "wd" in config else 0.0,
                           config.startswith("nesterov"))
        results.append([backend.to_numpy(a) for a in ws + state[0] + state[1]])
    for found, expected in zip(results[1], results[0]):
        np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("config", ["adam-wd", "adamw-wd"])
def test_adam_with_device_corrections_equals_adam_with_host_scalars(config, kernel_backend):
    """optim.adam_multi_table (bias corrections read from a BiasCorrections table, for CUDA
    graphs) against optim.adam_multi (host scalars), three steps from step 5, on NumPy (the
    twins) and on the device: all four equal bit for bit; the table's position moved 3 rows."""
    params, grads = host_data(3)
    results = []
    for backend in (get_backend("cpu"), kernel_backend):
        for corrections in (None, BiasCorrections()):
            xp = backend.xp
            ws = [backend.asarray(v.copy()) for v in params.values()]
            state = [[xp.zeros_like(w) for w in ws] for _ in range(2)]
            table = TensorTable()
            for steps, g in enumerate(grads[:3], start=5):
                gs = [backend.asarray(v.copy()) for v in g.values()]
                adam_update(table, ws, gs, state[0], state[1], 0.01, (0.8, 0.99), 1e-6, 0.1,
                            config == "adamw-wd", steps, corrections)
            if corrections is not None:
                assert corrections.first == 5 and int(backend.to_numpy(corrections.position)[0]) == 3
            results.append([backend.to_numpy(a) for a in ws + state[0] + state[1]])
    for found in results[1:]:
        for a, b in zip(found, results[0]):
            np.testing.assert_array_equal(a, b)


def test_grad_layouts_the_kernel_reads():
    g = np.zeros((3, 5, 3, 3), np.float32)
    assert grad_layout(g) == (1, 1, 135, 0, 0, 0, 1)
    assert grad_layout(g.transpose(3, 2, 1, 0)) == (3, 5, 3, 1, 3, 9, 45)  # (3, 3, 5, 3) view
    assert grad_layout(g[:, :, ::-1]) is None  # negative stride: copied first
    assert grad_layout(np.zeros((2,) * 5, np.float32).transpose(4, 3, 2, 1, 0)) is None


def test_table_is_uploaded_only_when_a_parameter_or_buffer_changes():
    """The table holds parameters and state buffers (updated in place: same addresses); new
    gradient arrays every step (their addresses go by value) need no upload; a parameter
    replaced (as Sequential.to() or load_state_dict() does) needs exactly one."""
    params, grads = host_data(3)
    backend = standin_backend(kernels="optimizer")
    bag = Bag(params, backend)
    opt = SGD(bag, 0.1, momentum=0.9)
    reference = Bag(params, get_backend("cpu"))
    ref_opt = SGD(reference, 0.1, momentum=0.9)
    kept = []
    for step, g in enumerate(grads):
        kept.append(dict(bag.layer.grads))  # alive: the new gradients take new addresses
        backend.xp.reset_transfers()
        for b in (bag, reference):
            b.set_grads(g)
        if step == 2:  # a parameter replaced by a copy at another address
            bag.layer.params["p1"] = bag.layer.params["p1"].copy()
        opt.step()
        ref_opt.step()
        assert backend.xp.transfers["to_device"] == len(g) + (step in (0, 2))  # the grads (+ the table)
    assert opt._table.uploads == 2
    assert_same(bag.host_params(), reference.host_params(), "after new gradients and a replaced parameter")


def tiny_model(seed=0):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 3, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(3 * 4 * 4, 5, rng=r)])


def train(model, opt, x, y, steps):
    loss_fn = SoftmaxCrossEntropy()
    for _ in range(steps):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_model_trains_on_the_standin_exactly_as_on_numpy(config):
    """Conv2D (whose weight gradient is a strided view) and Dense, three steps with the
    optimizer group on the stand-in: the same weights as NumPy, bit for bit."""
    r = np.random.default_rng(5)
    x, y = r.standard_normal((8, 1, 8, 8)).astype(np.float32), r.integers(0, 5, 8)
    results = []
    for backend in (get_backend("cpu"), standin_backend(kernels="optimizer")):
        model = tiny_model(6).to(backend)
        train(model, CONFIGS[config](model), backend.asarray(x), backend.asarray(y), 3)
        results.append(model.state_dict())
    assert_same(results[1], results[0], config)


@pytest.mark.parametrize("config, generic_per_tensor", [("sgd", 2), ("nesterov-wd", 8), ("adamw-wd", 14)])
def test_one_launch_a_step_instead_of_several_per_tensor(config, generic_per_tensor):
    """Launches of one optimizer step on the stand-in, after the first (which also fills the
    new state buffers: one fill per buffer kind, not per tensor)."""
    r = np.random.default_rng(5)
    x, y = r.standard_normal((4, 1, 8, 8)).astype(np.float32), r.integers(0, 5, 4)
    counts = {}
    for kernels in ("none", "optimizer"):
        backend = standin_backend(kernels=kernels)
        model = tiny_model(6).to(backend)
        opt = CONFIGS[config](model)
        train(model, opt, backend.asarray(x), backend.asarray(y), 1)
        loss_fn, work = SoftmaxCrossEntropy(), backend.xp.work
        loss_fn.forward(model.forward(backend.asarray(x)), backend.asarray(y))
        model.backward(loss_fn.backward(), need_input_grad=False)
        before = work.launches
        opt.step()
        counts[kernels] = work.launches - before
    assert counts == {"none": generic_per_tensor * 4, "optimizer": 1}


def test_first_step_fills_each_buffer_kind_once():
    params, grads = host_data(4)
    backend = standin_backend(kernels="optimizer")
    bag = Bag(params, backend)
    opt = Adam(bag, 0.01)
    bag.set_grads(grads[0])
    before = backend.xp.work.launches
    opt.step()
    assert backend.xp.work.launches - before == 3  # zeros for m, zeros for v, the update
    assert all(b.shape == bag.layer.params[k[2:]].shape for k, bufs in opt.state.items() for b in bufs.values())


@pytest.mark.parametrize("config", ["nesterov-wd", "adam-wd", "adamw"])
def test_state_dict_round_trip_with_the_kernel_path(config):
    """Resume from a state saved by the kernel path, and from one saved on NumPy: both continue
    exactly as the uninterrupted NumPy run."""
    r = np.random.default_rng(5)
    x, y = r.standard_normal((8, 1, 8, 8)).astype(np.float32), r.integers(0, 5, 8)
    cpu = get_backend("cpu")
    model = tiny_model(6)
    opt = CONFIGS[config](model)
    train(model, opt, x, y, 2)
    saved_weights, saved_state = model.state_dict(), opt.state_dict()
    train(model, opt, x, y, 2)
    expected = model.state_dict()

    backend = standin_backend(kernels="optimizer")
    fused = tiny_model(6).to(backend)
    fused_opt = CONFIGS[config](fused)
    train(fused, fused_opt, backend.asarray(x), backend.asarray(y), 2)
    assert_same(fused.state_dict(), saved_weights, "after 2 fused steps")
    state = fused_opt.state_dict()
    assert state["steps"] == saved_state["steps"] and state["state"].keys() == saved_state["state"].keys()
    for key, buffers in saved_state["state"].items():
        assert_same(state["state"][key], buffers, key)

    for source in (state, saved_state):
        resumed = tiny_model(99).to(backend)
        resumed.load_state_dict(saved_weights)
        resumed_opt = CONFIGS[config](resumed)
        resumed_opt.load_state_dict(source)
        train(resumed, resumed_opt, backend.asarray(x), backend.asarray(y), 2)
        assert_same(resumed.state_dict(), expected, "resumed")
    assert cpu.name == "cpu"


def test_float64_parameters_take_the_per_tensor_path():
    params, grads = host_data(5)
    params = {k: v.astype(np.float64) for k, v in params.items()}
    backend = standin_backend(kernels="optimizer")
    bag, reference = Bag(params, backend), Bag(params, get_backend("cpu"))
    for b in (bag, reference):
        opt = SGD(b, 0.1, momentum=0.9)
        b.set_grads({k: v.astype(np.float64) for k, v in grads[0].items()})
        opt.step()
    assert "kernel optim.sgd_multi" not in backend.xp.work.by_kind
    for key, value in reference.host_params().items():
        np.testing.assert_array_equal(bag.host_params()[key], value)


def test_work_items_cover_every_element_once():
    """The (tensor, first element) map: CHUNK-sized items, the last one of each tensor short."""
    ws = [np.zeros(n, np.float32) for n in (1, CHUNK, CHUNK + 1, 3 * CHUNK - 1)]
    _, sizes, layouts, block_tensor, block_start, first_item = TensorTable().views(
        np, [ws], [grad_layout(w) for w in ws])
    np.testing.assert_array_equal(first_item, [0, 1, 2, 4, 7])
    np.testing.assert_array_equal(block_tensor, [0, 1, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(block_start, [0, 0, 0, CHUNK, 0, CHUNK, 2 * CHUNK])
    np.testing.assert_array_equal(sizes, [1, CHUNK, CHUNK + 1, 3 * CHUNK - 1])
    assert layouts.shape == (4 * 7,)


def test_more_than_32_tensors_take_one_launch_per_32():
    r = np.random.default_rng(6)
    params = {f"p{i}": r.standard_normal(i % 5 + 1).astype(np.float32) for i in range(70)}
    grads = {k: r.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    backend = standin_backend(kernels="optimizer")
    bag, reference = Bag(params, backend), Bag(params, get_backend("cpu"))
    for b in (bag, reference):
        opt = Adam(b, 0.01, weight_decay=0.1)
        b.set_grads(grads)
        opt.step()
    assert backend.xp.work.by_kind["kernel optim.adam_multi"] == 3  # 32 + 32 + 6 tensors
    assert_same(bag.host_params(), reference.host_params(), "70 tensors")
