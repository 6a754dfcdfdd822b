"""On a GPU: ms per training step as train_epoch runs it (gather, forward, fused loss into its
slot, backward, optimizer) for simple / lenet / lenet-bn at batch 64, kernels none vs all,
then a cProfile of lenet b64 with every kernel (host time per function)."""
import cProfile, pstats, sys, time
import numpy as np
sys.path.insert(0, ".")
from gpucnn.backend import get_backend
from gpucnn.zoo import build_model
from gpucnn.optim import SGD
from gpucnn.losses import SoftmaxCrossEntropy
from gpucnn.pixels import gather_batch

def case(arch, kernels, batch=64):
    b = get_backend("gpu", kernels=kernels)
    shape = (1, 28, 28)
    model = build_model(arch, shape, 10, np.random.default_rng(0)).to(b)
    opt, loss = SGD(model, 0.01, momentum=0.9), SoftmaxCrossEntropy()
    r = np.random.default_rng(1)
    x = b.asarray(r.integers(0, 255, (batch * 8, *shape)).astype(np.uint8)); y = b.asarray(r.integers(0, 10, batch * 8))
    order = b.asarray(np.arange(batch * 8, dtype=np.int64))
    losses = b.xp.zeros(8, dtype=np.float32); correct = b.xp.zeros((), dtype=np.int64)
    def step(i):
        xb, yb = gather_batch(x, y, order[(i % 8) * batch:(i % 8 + 1) * batch])
        logits = model.forward(xb)
        loss.forward(logits, yb, loss_out=losses[i % 8:i % 8 + 1], correct_out=correct)
        model.backward(loss.backward(), need_input_grad=False)
        opt.step()
    return b, step

for arch in ("simple", "lenet", "lenet-bn"):
    for kernels in ("none", "all"):
        b, step = case(arch, kernels)
        for i in range(30): step(i)
        b.synchronize(); t = time.perf_counter()
        for i in range(200): step(i)
        host = time.perf_counter() - t; b.synchronize(); wall = time.perf_counter() - t
        print(f"{arch:9s} b64 kernels={kernels:4s}: {wall / 200 * 1e3:.3f} ms/step wall, {host / 200 * 1e3:.3f} ms/step host")
b, step = case("lenet", "all")
for i in range(30): step(i)
b.synchronize()
pr = cProfile.Profile(); pr.enable()
for i in range(200): step(i)
b.synchronize(); pr.disable()
st = pstats.Stats(pr); st.sort_stats("tottime").print_stats(30); st.sort_stats("cumtime").print_stats(25)
