// Multi-tensor optimizer updates: every parameter of a model in ONE launch (as PyTorch's
// multi_tensor_apply; up to 32 tensors a launch, gpucnn/backends/kernels/optim.py launches once per 32).
// Parameters and state buffers are reached through a device table of addresses that changes
// only when an array is replaced (gpucnn/backends/kernels/optim.py uploads it then); the gradients,
// new arrays every step, come as kernel arguments g0..g31 (by value, as torch passes its
// tensor lists), so a step uploads nothing:
//   params[t], velocity[t] / m[t], v[t]: addresses of tensor t's float32 arrays, C-contiguous,
//       sizes[t] elements each (the tables are read; the arrays they address updated in place)
//   g<t - first_tensor>: the address of tensor t's gradient (only read), laid out as
//   grad_layout[7t .. 7t+6] = d1, d2, d3, s0, s1, s2, s3 says: (d0, d1, d2, d3) with element
//       strides s0..s3 (Conv2D's weight gradient is a transposed view); a C-contiguous
//       gradient has d3 = sizes[t], s3 = 1 and is read flat
//   block_tensor[b], block_start[b]: work item b updates tensor block_tensor[b], elements
//       [block_start[b], min(block_start[b] + chunk, sizes[t]))
// This launch does work items [block_begin, block_end), whose tensors are first_tensor ..
// first_tensor + 31; blocks stride over them by gridDim.x, threads over a chunk by blockDim.x.
//
// Arithmetic: float32 throughout; every operation is rounded on its own (__fmul_rn, __fadd_rn,
// __fsub_rn, __fdiv_rn, __fsqrt_rn: NVRTC may not contract them into an FMA) and applied in the
// order of gpucnn/optim/optimizers.py's per-tensor array code, so results equal it bit for bit.
// No reductions, no atomics: each element is read and written by one thread (deterministic).

// Offset of element i (C order) of a gradient laid out as layout[0..6] describes.
__device__ __forceinline__ long long grad_offset(const unsigned long long* __restrict__ layout,
                                                 long long i, long long size) {
    const long long d1 = (long long)layout[0], d2 = (long long)layout[1], d3 = (long long)layout[2];
    const long long s3 = (long long)layout[6];
    if (s3 == 1 && d3 == size) return i;  // C-contiguous
    long long rest = i;
    long long offset = (rest % d3) * s3;
    rest /= d3;
    offset += (rest % d2) * (long long)layout[5];
    rest /= d2;
    offset += (rest % d1) * (long long)layout[4];
    rest /= d1;
    return offset + rest * (long long)layout[3];
}

// the gradients' addresses as an array (indexed by t - first_tensor)
#define GRADIENTS \
    const unsigned long long gradients[32] = { \
        g0, g1, g2, g3, g4, g5, g6, g7, \
        g8, g9, g10, g11, g12, g13, g14, g15, \
        g16, g17, g18, g19, g20, g21, g22, g23, \
        g24, g25, g26, g27, g28, g29, g30, g31}

extern "C" __global__ void sgd_multi(const unsigned long long* __restrict__ params,
                                     const unsigned long long* __restrict__ velocity,
                                     const unsigned long long* __restrict__ sizes,
                                     const unsigned long long* __restrict__ grad_layout,
                                     const unsigned long long* __restrict__ block_tensor,
                                     const unsigned long long* __restrict__ block_start,
                                     long long block_begin, long long block_end, long long first_tensor,
                                     long long chunk, float lr, float momentum, float weight_decay,
                                     int nesterov,
        unsigned long long g0, unsigned long long g1, unsigned long long g2,
        unsigned long long g3, unsigned long long g4, unsigned long long g5,
        unsigned long long g6, unsigned long long g7, unsigned long long g8,
        unsigned long long g9, unsigned long long g10, unsigned long long g11,
        unsigned long long g12, unsigned long long g13, unsigned long long g14,
        unsigned long long g15, unsigned long long g16, unsigned long long g17,
        unsigned long long g18, unsigned long long g19, unsigned long long g20,
        unsigned long long g21, unsigned long long g22, unsigned long long g23,
        unsigned long long g24, unsigned long long g25, unsigned long long g26,
        unsigned long long g27, unsigned long long g28, unsigned long long g29,
        unsigned long long g30, unsigned long long g31) {
    // g = grad + weight_decay * w; v = v * momentum + g; g = g + momentum * v (Nesterov) or v;
    // w = w - lr * g. weight_decay == 0 / momentum == 0 skip their lines, as the Python code does;
    // with momentum == 0 the velocity table is never read.
    GRADIENTS;
    for (long long b = block_begin + blockIdx.x; b < block_end; b += gridDim.x) {
        const long long t = (long long)block_tensor[b];
        const long long start = (long long)block_start[b];
        const long long size = (long long)sizes[t];
        const long long stop = min(start + chunk, size);
        const unsigned long long* layout = grad_layout + 7 * t;
        float* w = reinterpret_cast<float*>(params[t]);
        const float* dw = reinterpret_cast<const float*>(gradients[t - first_tensor]);
        for (long long i = start + threadIdx.x; i < stop; i += blockDim.x) {
            const float p = w[i];
            float g = dw[grad_offset(layout, i, size)];
            if (weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(weight_decay, p));
            if (momentum != 0.0f) {
                float* vel = reinterpret_cast<float*>(velocity[t]);
                const float v = __fadd_rn(__fmul_rn(vel[i], momentum), g);
                vel[i] = v;
                g = nesterov ? __fadd_rn(g, __fmul_rn(momentum, v)) : v;
            }
            w[i] = __fsub_rn(p, __fmul_rn(lr, g));
        }
    }
}

// Adam (AdamW) over work items [block_begin, block_end): the body of adam_multi and
// adam_multi_table, which differ only in where the two bias corrections come from.
__device__ __forceinline__ void adam_items(const unsigned long long* __restrict__ params,
                                           const unsigned long long* __restrict__ m,
                                           const unsigned long long* __restrict__ v,
                                           const unsigned long long* __restrict__ sizes,
                                           const unsigned long long* __restrict__ grad_layout,
                                           const unsigned long long* __restrict__ block_tensor,
                                           const unsigned long long* __restrict__ block_start,
                                           long long block_begin, long long block_end,
                                           long long first_tensor, long long chunk, int decay_mode,
                                           float weight_decay, float decay_factor, float beta1,
                                           float one_minus_beta1, float beta2, float one_minus_beta2,
                                           float correction2_sqrt, float eps, float step_size,
                                           const unsigned long long* gradients) {
    // decay_mode 1 (Adam's L2): g = grad + weight_decay * w; 2 (AdamW): w = w * decay_factor
    // (decay_factor = 1 - lr * weight_decay, from the host in double); 0: neither.
    // m = m * beta1 + (1 - beta1) * g; v = v * beta2 + (g * g) * (1 - beta2);
    // w = w - (m / (sqrt(v) / correction2_sqrt + eps)) * step_size
    // (step_size = lr / (1 - beta1^t), correction2_sqrt = sqrt(1 - beta2^t): host, double, cast once).
    for (long long b = block_begin + blockIdx.x; b < block_end; b += gridDim.x) {
        const long long t = (long long)block_tensor[b];
        const long long start = (long long)block_start[b];
        const long long size = (long long)sizes[t];
        const long long stop = min(start + chunk, size);
        const unsigned long long* layout = grad_layout + 7 * t;
        float* w = reinterpret_cast<float*>(params[t]);
        const float* dw = reinterpret_cast<const float*>(gradients[t - first_tensor]);
        float* mt = reinterpret_cast<float*>(m[t]);
        float* vt = reinterpret_cast<float*>(v[t]);
        for (long long i = start + threadIdx.x; i < stop; i += blockDim.x) {
            float p = w[i];
            float g = dw[grad_offset(layout, i, size)];
            if (decay_mode == 2) {
                p = __fmul_rn(p, decay_factor);
            } else if (decay_mode == 1) {
                g = __fadd_rn(g, __fmul_rn(weight_decay, p));
            }
            const float mi = __fadd_rn(__fmul_rn(mt[i], beta1), __fmul_rn(one_minus_beta1, g));
            const float vi = __fadd_rn(__fmul_rn(vt[i], beta2), __fmul_rn(__fmul_rn(g, g), one_minus_beta2));
            mt[i] = mi;
            vt[i] = vi;
            const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), correction2_sqrt), eps);
            w[i] = __fsub_rn(p, __fmul_rn(__fdiv_rn(mi, denom), step_size));
        }
    }
}

extern "C" __global__ void adam_multi(const unsigned long long* __restrict__ params,
                                      const unsigned long long* __restrict__ m,
                                      const unsigned long long* __restrict__ v,
                                      const unsigned long long* __restrict__ sizes,
                                      const unsigned long long* __restrict__ grad_layout,
                                      const unsigned long long* __restrict__ block_tensor,
                                      const unsigned long long* __restrict__ block_start,
                                      long long block_begin, long long block_end, long long first_tensor,
                                      long long chunk, int decay_mode, float weight_decay,
                                      float decay_factor, float beta1, float one_minus_beta1, float beta2,
                                      float one_minus_beta2, float correction2_sqrt, float eps,
                                      float step_size,
        unsigned long long g0, unsigned long long g1, unsigned long long g2,
        unsigned long long g3, unsigned long long g4, unsigned long long g5,
        unsigned long long g6, unsigned long long g7, unsigned long long g8,
        unsigned long long g9, unsigned long long g10, unsigned long long g11,
        unsigned long long g12, unsigned long long g13, unsigned long long g14,
        unsigned long long g15, unsigned long long g16, unsigned long long g17,
        unsigned long long g18, unsigned long long g19, unsigned long long g20,
        unsigned long long g21, unsigned long long g22, unsigned long long g23,
        unsigned long long g24, unsigned long long g25, unsigned long long g26,
        unsigned long long g27, unsigned long long g28, unsigned long long g29,
        unsigned long long g30, unsigned long long g31) {
    GRADIENTS;
    adam_items(params, m, v, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
               first_tensor, chunk, decay_mode, weight_decay, decay_factor, beta1, one_minus_beta1, beta2,
               one_minus_beta2, correction2_sqrt, eps, step_size, gradients);
}

// adam_multi with the bias corrections read on the device, for a step replayed from a CUDA
// graph (gpucnn/backends/cuda_graphs.py), whose scalars are fixed: step p = position[0] of a table uploaded by
// gpucnn/backends/kernels/optim.py uses corrections[2p] = step_size and corrections[2p + 1] =
// correction2_sqrt, the same float32 numbers the host passes adam_multi; advance() then moves p.
extern "C" __global__ void adam_multi_table(const unsigned long long* __restrict__ params,
                                            const unsigned long long* __restrict__ m,
                                            const unsigned long long* __restrict__ v,
                                            const unsigned long long* __restrict__ sizes,
                                            const unsigned long long* __restrict__ grad_layout,
                                            const unsigned long long* __restrict__ block_tensor,
                                            const unsigned long long* __restrict__ block_start,
                                            long long block_begin, long long block_end,
                                            long long first_tensor, long long chunk, int decay_mode,
                                            float weight_decay, float decay_factor, float beta1,
                                            float one_minus_beta1, float beta2, float one_minus_beta2,
                                            const float* __restrict__ corrections,
                                            const long long* __restrict__ position, float eps,
        unsigned long long g0, unsigned long long g1, unsigned long long g2,
        unsigned long long g3, unsigned long long g4, unsigned long long g5,
        unsigned long long g6, unsigned long long g7, unsigned long long g8,
        unsigned long long g9, unsigned long long g10, unsigned long long g11,
        unsigned long long g12, unsigned long long g13, unsigned long long g14,
        unsigned long long g15, unsigned long long g16, unsigned long long g17,
        unsigned long long g18, unsigned long long g19, unsigned long long g20,
        unsigned long long g21, unsigned long long g22, unsigned long long g23,
        unsigned long long g24, unsigned long long g25, unsigned long long g26,
        unsigned long long g27, unsigned long long g28, unsigned long long g29,
        unsigned long long g30, unsigned long long g31) {
    GRADIENTS;
    const long long p = position[0];
    adam_items(params, m, v, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
               first_tensor, chunk, decay_mode, weight_decay, decay_factor, beta1, one_minus_beta1, beta2,
               one_minus_beta2, corrections[2 * p + 1], eps, corrections[2 * p], gradients);
}

// position[0] += 1: the next step's row of adam_multi_table's corrections (one thread).
extern "C" __global__ void advance(long long* position) {
    if (blockIdx.x == 0 && threadIdx.x == 0) position[0] += 1;
}
