// Max pooling, forward and backward, one launch each (twins: gpucnn/backends/kernels/pool.py).
//
// Layouts. x and dy are read through their element strides (sn, sc, sh, sw) in NCHW
// order, so any layout is read without a copy. y, offset and dx are written
// batch-innermost: C-contiguous (C, OH, OW, N) and (C, H, W, N) memory; consecutive
// threads handle consecutive samples, so those writes (and reads of batch-innermost
// inputs) are coalesced.
//
// offset[c, oh, ow, n] is the window offset i*kw + j of the FIRST element, in row-major
// order, whose value is >= y - 16 eps |y| (gpucnn.nn.layers.pooling._tied_with_max: values
// that close to the maximum count as tied with it), or NO_OFFSET (255) when the window
// routes no gradient (a NaN maximum, or, with relu, a maximum <= 0). kh*kw <= 255.
// Padding positions count as -inf.

#define NO_OFFSET 255

// x[n, c, row, col], or -inf outside the image (padding)
__device__ __forceinline__ float window_value(const float* __restrict__ xc, int row, int col, int height,
                                              int width, long long x_sh, long long x_sw) {
    if (row < 0 || row >= height || col < 0 || col >= width) {
        return __int_as_float(0xff800000);  // -inf
    }
    return xc[row * x_sh + col * x_sw];
}

// One thread per output (c, oh, ow, n), grid-stride. relu != 0 also applies ReLU to the
// pooled value (relu(max) == max(relu)) and records NO_OFFSET where the result is not > 0.
extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ y,
                                           unsigned char* __restrict__ offset, int batch, int channels,
                                           int height, int width, long long x_sn, long long x_sc,
                                           long long x_sh, long long x_sw, int out_h, int out_w, int kh,
                                           int kw, int stride, int pad, int relu) {
    const long long count = (long long)channels * out_h * out_w * batch;
    // -16 FLT_EPSILON = -2^-19: |y| times it is exact, as in _tied_with_max
    const float tie_scale = -16.0f * 1.1920928955078125e-7f;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < count;
         t += (long long)gridDim.x * blockDim.x) {
        long long rest = t;
        const int n = (int)(rest % batch);
        rest /= batch;
        const int ow = (int)(rest % out_w);
        rest /= out_w;
        const int oh = (int)(rest % out_h);
        const int c = (int)(rest / out_h);
        const float* xc = x + n * x_sn + c * x_sc;
        const int row0 = oh * stride - pad, col0 = ow * stride - pad;

        // the running maximum, as numpy.maximum: a NaN wins and stays
        float m = __int_as_float(0xff800000);
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const float v = window_value(xc, row0 + i, col0 + j, height, width, x_sh, x_sw);
                if (v > m || v != v) m = v;
            }
        }
        // tied = |m| * (-16 eps) + m, two float32 roundings as NumPy does them (_rn: no FMA)
        const float tied = __fadd_rn(__fmul_rn(fabsf(m), tie_scale), m);
        int first = NO_OFFSET;
        for (int k = 0; k < kh * kw && first == NO_OFFSET; ++k) {
            if (window_value(xc, row0 + k / kw, col0 + k % kw, height, width, x_sh, x_sw) >= tied) first = k;
        }
        if (relu && !(m > 0.0f)) {  // ReLU(m): NaN stays NaN, the rest becomes 0; no gradient
            first = NO_OFFSET;
            if (m == m) m = 0.0f;
        }
        y[t] = m;
        offset[t] = (unsigned char)first;
    }
}

// A gather, no atomics: one thread per input element (c, h, w, n) of dx, grid-stride.
// dx = the sum of dy over the windows that contain the element and whose offset points at
// it, added in ascending window offset (oh and ow descending), float32 accumulation from
// 0: the order in which MaxPool2D's NumPy path adds its offsets' contributions.
extern "C" __global__ void maxpool_backward(const float* __restrict__ dy,
                                            const unsigned char* __restrict__ offset,
                                            float* __restrict__ dx, int batch, int channels, int height,
                                            int width, long long dy_sn, long long dy_sc, long long dy_sh,
                                            long long dy_sw, int out_h, int out_w, int kh, int kw,
                                            int stride, int pad) {
    const long long count = (long long)channels * height * width * batch;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < count;
         t += (long long)gridDim.x * blockDim.x) {
        long long rest = t;
        const int n = (int)(rest % batch);
        rest /= batch;
        const int w = (int)(rest % width);
        rest /= width;
        const int h = (int)(rest % height);
        const int c = (int)(rest / height);
        const int hp = h + pad, wp = w + pad;  // position in the padded input
        // windows oh with oh*stride <= hp <= oh*stride + kh - 1, inside the output
        const int oh_lo = hp < kh ? 0 : (hp - kh + stride) / stride;
        const int oh_hi = min(out_h - 1, hp / stride);
        const int ow_lo = wp < kw ? 0 : (wp - kw + stride) / stride;
        const int ow_hi = min(out_w - 1, wp / stride);
        const long long plane = (long long)c * out_h;
        float sum = 0.0f;  // float32 accumulation
        for (int oh = oh_hi; oh >= oh_lo; --oh) {
            const int i = hp - oh * stride;
            for (int ow = ow_hi; ow >= ow_lo; --ow) {
                const int k = i * kw + (wp - ow * stride);
                if (offset[((plane + oh) * out_w + ow) * batch + n] == k) {
                    sum += dy[n * dy_sn + c * dy_sc + oh * dy_sh + ow * dy_sw];
                }
            }
        }
        dx[t] = sum;
    }
}
