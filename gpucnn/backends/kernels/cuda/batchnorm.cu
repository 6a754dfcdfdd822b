// BatchNorm as fused kernels, two launches a direction (NumPy twins: gpucnn/backends/kernels/batchnorm.py).
//
// Layout: x is a dense buffer holding the (N, C, H, W) or (N, C) input in any axis order, seen
// as (outer, C, inner): element (o, c, k) sits at x[(o*C + c)*inner + k]; inner is the product
// of the axes inside C in memory, outer of those outside it. Batch-innermost (C, H, W, N)
// memory: outer = 1, inner = H*W*N. NCHW: outer = N, inner = H*W. (N, C): outer = N, inner = 1.
// Outputs (y, dx) are written at the same offsets as x: in x's layout. M = outer*inner values
// per channel.
//
// Statistics are (mean, var) per channel, var biased; every kernel turns var into
// inv_std = 1 / sqrt(var + eps) with IEEE float32 add, sqrt and division, as the twins do.
//
// Sums over a channel (stats, backward_reduce): one block per channel (grid-stride over
// channels), each thread accumulating its elements j = threadIdx.x, +blockDim.x, ... in DOUBLE
// (four at a time, their loads issued together, then the rest one by one),
// then a fixed-order tree over the block (blockDim.x a power of two, <= 1024): deterministic,
// no atomics. Double keeps the sums' rounding (<= 2*M*2^-53*sum|terms|) far below float32's
// last bit, so kernel and twin (float64 NumPy sums in another order) agree to within one
// rounding of the float32 results. The variance is shifted-data: d = x - x[0, c, 0] (the
// channel's first element), var = (sum d^2 - (sum d)^2 / M) / M: no cancellation of the
// mean's square for data such as 1000 + small noise.
//
// Elementwise arithmetic (normalize, backward_dx, the running statistics) is float32 with
// explicit round-to-nearest intrinsics (__fadd_rn, __fmul_rn, ...): they are never contracted
// into FMAs, so each result is bit-identical to the twin's NumPy float32 operations.

#define MAX_BLOCK 1024

// Flat offset of the j-th value (0 <= j < outer*inner) of channel c.
__device__ __forceinline__ long long offset_of(long long j, int c, int channels, long long outer,
                                               long long inner) {
    if (outer == 1) return (long long)c * inner + j;  // one run per channel (batch-innermost)
    if (inner == 1) return j * channels + c;          // (N, C)
    long long o;
    if (outer * inner <= 0xffffffffLL) {
        o = (long long)((unsigned int)j / (unsigned int)inner);  // 32-bit division where it fits
    } else {
        o = j / inner;
    }
    return (o * channels + c) * inner + (j - o * inner);
}

__device__ __forceinline__ float inv_std_of(float var, float eps) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

// a and b summed over the block in a fixed tree order; every thread returns the totals.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* sa, double* sb) {
    const int t = threadIdx.x;
    __syncthreads();  // the previous channel's readers of sa, sb are done
    sa[t] = a;
    sb[t] = b;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) {
            sa[t] += sa[t + s];
            sb[t] += sb[t + s];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// Training statistics: mean[c], var[c] (biased) of the M values of channel c, and the running
// statistics moved in place as the layer's NumPy path does:
//   running_mean = keep * running_mean + momentum * mean
//   running_var  = keep * running_var + momentum_unbiased * var
// with keep = float32(1 - momentum), momentum_unbiased = float32(momentum * M / (M - 1)).
extern "C" __global__ void stats(const float* __restrict__ x, float* __restrict__ mean,
                                 float* __restrict__ var, float* __restrict__ running_mean,
                                 float* __restrict__ running_var, int channels, long long outer,
                                 long long inner, float keep, float momentum, float momentum_unbiased) {
    __shared__ double sa[MAX_BLOCK], sb[MAX_BLOCK];
    const long long count = outer * inner;
    for (int c = blockIdx.x; c < channels; c += gridDim.x) {
        const double pivot = (double)x[(long long)c * inner];  // element (0, c, 0)
        double s1 = 0.0, s2 = 0.0;  // double accumulation: sum d, sum d^2
        const long long step = blockDim.x;
        long long j = threadIdx.x;
        for (; j + 3 * step < count; j += 4 * step) {  // four loads in flight per thread
            float v[4];
            for (int u = 0; u < 4; ++u) v[u] = x[offset_of(j + u * step, c, channels, outer, inner)];
            for (int u = 0; u < 4; ++u) {
                const double d = (double)v[u] - pivot;
                s1 += d;
                s2 += d * d;
            }
        }
        for (; j < count; j += step) {
            const double d = (double)x[offset_of(j, c, channels, outer, inner)] - pivot;
            s1 += d;
            s2 += d * d;
        }
        block_sum2(s1, s2, sa, sb);
        if (threadIdx.x == 0) {
            const double m = (double)count;
            const double shift = __ddiv_rn(s1, m);  // mean - pivot
            double v = __ddiv_rn(__dsub_rn(s2, __dmul_rn(s1, shift)), m);
            v = v > 0.0 ? v : 0.0;  // rounding can leave it a hair below zero
            const float mean_c = (float)__dadd_rn(pivot, shift);
            const float var_c = (float)v;
            mean[c] = mean_c;
            var[c] = var_c;
            running_mean[c] = __fadd_rn(__fmul_rn(keep, running_mean[c]), __fmul_rn(momentum, mean_c));
            running_var[c] = __fadd_rn(__fmul_rn(keep, running_var[c]), __fmul_rn(momentum_unbiased, var_c));
        }
    }
}

// y = (x - mean) * (weight * inv_std) + bias, one pass, y at x's offsets. Threads: x (grid-
// stride) over the M values of a channel, y (grid-stride) over channels. Training: the batch
// statistics from stats; evaluation: the running statistics (inv_std computed here).
extern "C" __global__ void normalize(const float* __restrict__ x, const float* __restrict__ mean,
                                     const float* __restrict__ var, const float* __restrict__ weight,
                                     const float* __restrict__ bias, float* __restrict__ y, int channels,
                                     long long outer, long long inner, float eps) {
    const long long count = outer * inner;
    for (int c = blockIdx.y; c < channels; c += gridDim.y) {
        const float scale = __fmul_rn(weight[c], inv_std_of(var[c], eps));
        const float mean_c = mean[c], bias_c = bias[c];
        for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < count;
             j += (long long)gridDim.x * blockDim.x) {
            const long long i = offset_of(j, c, channels, outer, inner);
            y[i] = __fadd_rn(__fmul_rn(__fsub_rn(x[i], mean_c), scale), bias_c);
        }
    }
}

// Per channel: dbias = sum(dy), dweight = sum(dy * (x - mean)) * inv_std = sum(dy * x_hat);
// double accumulation, one block per channel as in stats. dy is at x's offsets.
extern "C" __global__ void backward_reduce(const float* __restrict__ x, const float* __restrict__ dy,
                                           const float* __restrict__ mean, const float* __restrict__ var,
                                           float* __restrict__ dweight, float* __restrict__ dbias,
                                           int channels, long long outer, long long inner, float eps) {
    __shared__ double sa[MAX_BLOCK], sb[MAX_BLOCK];
    const long long count = outer * inner;
    for (int c = blockIdx.x; c < channels; c += gridDim.x) {
        const double mean_c = (double)mean[c];
        double s_dy = 0.0, s_dyx = 0.0;  // double accumulation: sum dy, sum dy * (x - mean)
        const long long step = blockDim.x;
        long long j = threadIdx.x;
        for (; j + 3 * step < count; j += 4 * step) {  // eight loads in flight per thread
            float g[4], v[4];
            for (int u = 0; u < 4; ++u) {
                const long long i = offset_of(j + u * step, c, channels, outer, inner);
                g[u] = dy[i];
                v[u] = x[i];
            }
            for (int u = 0; u < 4; ++u) {
                s_dy += (double)g[u];
                s_dyx += (double)g[u] * ((double)v[u] - mean_c);
            }
        }
        for (; j < count; j += step) {
            const long long i = offset_of(j, c, channels, outer, inner);
            const double g = (double)dy[i];
            s_dy += g;
            s_dyx += g * ((double)x[i] - mean_c);
        }
        block_sum2(s_dy, s_dyx, sa, sb);
        if (threadIdx.x == 0) {
            dbias[c] = (float)s_dy;
            dweight[c] = (float)__dmul_rn(s_dyx, (double)inv_std_of(var[c], eps));
        }
    }
}

// dx = weight * inv_std * ((dy - dbias * inv_count) - x_hat * (dweight * inv_count)),
// x_hat = (x - mean) * inv_std, dx at x's offsets. inv_count = 1/M after a training forward
// (batch statistics); 0 after an evaluation forward (fixed statistics: dx = weight*inv_std*dy).
// Threads as in normalize.
extern "C" __global__ void backward_dx(const float* __restrict__ x, const float* __restrict__ dy,
                                       const float* __restrict__ mean, const float* __restrict__ var,
                                       const float* __restrict__ weight, const float* __restrict__ dweight,
                                       const float* __restrict__ dbias, float* __restrict__ dx, int channels,
                                       long long outer, long long inner, float eps, float inv_count) {
    const long long count = outer * inner;
    for (int c = blockIdx.y; c < channels; c += gridDim.y) {
        const float inv_std = inv_std_of(var[c], eps);
        const float scale = __fmul_rn(weight[c], inv_std);
        const float mean_c = mean[c];
        const float a = __fmul_rn(dbias[c], inv_count);    // sum(dy) / M
        const float b = __fmul_rn(dweight[c], inv_count);  // sum(dy * x_hat) / M
        for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < count;
             j += (long long)gridDim.x * blockDim.x) {
            const long long i = offset_of(j, c, channels, outer, inner);
            const float x_hat = __fmul_rn(__fsub_rn(x[i], mean_c), inv_std);
            dx[i] = __fmul_rn(scale, __fsub_rn(__fsub_rn(dy[i], a), __fmul_rn(x_hat, b)));
        }
    }
}
