// Conv2D's im2col and col2im, one launch each (NumPy twins: gpucnn/backends/kernels/im2col.py).
//
// Columns: cols is C-contiguous (K, P), K = c*kh*kw rows, P = out_h*out_w*n columns.
//   row  r = (ch*kh + i)*kw + j                  (input channel ch, kernel offset (i, j))
//   col    = (((ph*bw + pw)*block_h + qh)*block_w + qw)*n + b
//            for output (oh, ow) = (bh*qh + ph, bw*qw + pw), sample b,
//            block_h = out_h/bh, block_w = out_w/bw: the blocked order of
//            gpucnn.nn.layers.im2col.im2col (blocks (1, 1): plain (OH, OW, N) order).
// Input element (ch, hh, ww) of sample b sits at padded position (hh + pad_top, ww + pad_left);
// output (oh, ow) at offset (i, j) reads padded position (stride*oh + i, stride*ow + j).
// Padding outside the input reads as zero; bottom/right padding is implied by out_h, out_w.
//
// Threads: x (grid-stride) over positions (the columns for im2col, the (hh, ww, b) of one
// channel of dx for col2im), y (grid-stride) over input channels. Flat offsets are 64-bit.

__device__ __forceinline__ long long blocked_column(int oh, int ow, long long b, int n, int bh, int bw,
                                                    int block_h, int block_w) {
    return ((((long long)(oh % bh) * bw + ow % bw) * block_h + oh / bh) * block_w + ow / bw) * n + b;
}

// x: float32 elements of a 4-D array; element (b, ch, hh, ww) of the (N, C, H, W) input is
// x[b*s_n + ch*s_c + hh*s_h + ww*s_w] (element strides: any layout, no copy).
// Writes rows 0..K-1 of cols (a pure copy: exact).
extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ cols,
                                  int c, int h, int w, int n,
                                  long long s_n, long long s_c, long long s_h, long long s_w,
                                  int kh, int kw, int stride, int pad_top, int pad_left,
                                  int out_h, int out_w, int bh, int bw) {
    const long long positions = (long long)out_h * out_w * n;  // P, the columns
    const int block_h = out_h / bh, block_w = out_w / bw;
    for (long long col = blockIdx.x * (long long)blockDim.x + threadIdx.x; col < positions;
         col += (long long)gridDim.x * blockDim.x) {
        long long rest = col;
        const long long b = rest % n;
        rest /= n;
        const int qw = (int)(rest % block_w);
        rest /= block_w;
        const int qh = (int)(rest % block_h);
        rest /= block_h;
        const int pw = (int)(rest % bw);
        const int ph = (int)(rest / bw);
        const int h0 = stride * (bh * qh + ph) - pad_top;   // input row of offset i = 0
        const int w0 = stride * (bw * qw + pw) - pad_left;  // input column of offset j = 0
        for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
            const float* x_sample = x + ch * s_c + b * s_n;
            float* out = cols + (long long)ch * kh * kw * positions + col;  // row (ch, 0, 0)
            for (int i = 0; i < kh; ++i) {
                const int hh = h0 + i;
                const bool row_inside = hh >= 0 && hh < h;
                for (int j = 0; j < kw; ++j) {
                    const int ww = w0 + j;
                    *out = (row_inside && ww >= 0 && ww < w) ? x_sample[hh * s_h + ww * s_w] : 0.0f;
                    out += positions;  // next row (ch, i, j + 1)
                }
            }
        }
    }
}

// The adjoint of im2col as a gather (no atomics): one thread per element (ch, hh, ww, b) of
// the unpadded dx, C-contiguous (C, H, W, N), sums dcols (K, P) over the offsets (i, j) whose
// window covers it. Accumulates in float32, starting from 0.0f, over (i, j) in row-major
// order: the twin adds the same terms in the same order, so both agree bit for bit.
extern "C" __global__ void col2im(const float* __restrict__ dcols, float* __restrict__ dx,
                                  int c, int h, int w, int n,
                                  int kh, int kw, int stride, int pad_top, int pad_left,
                                  int out_h, int out_w, int bh, int bw) {
    const long long positions = (long long)out_h * out_w * n;  // P, the columns
    const long long pixels = (long long)h * w * n;             // elements of one channel of dx
    const int block_h = out_h / bh, block_w = out_w / bw;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < pixels;
         e += (long long)gridDim.x * blockDim.x) {
        long long rest = e;
        const long long b = rest % n;
        rest /= n;
        const int ww = (int)(rest % w);
        const int hh = (int)(rest / w);
        for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
            const float* dcols_channel = dcols + (long long)ch * kh * kw * positions;
            float sum = 0.0f;  // float32 accumulation, (i, j) row-major, as the twin
            for (int i = 0; i < kh; ++i) {
                const int row = hh + pad_top - i;  // padded row = stride*oh
                if (row < 0) break;                // smaller still for larger i
                if (row % stride != 0) continue;
                const int oh = row / stride;
                if (oh >= out_h) continue;
                for (int j = 0; j < kw; ++j) {
                    const int column = ww + pad_left - j;  // padded column = stride*ow
                    if (column < 0) break;
                    if (column % stride != 0) continue;
                    const int ow = column / stride;
                    if (ow >= out_w) continue;
                    sum += dcols_channel[(long long)(i * kw + j) * positions
                                         + blocked_column(oh, ow, b, n, bh, bw, block_h, block_w)];
                }
            }
            dx[ch * pixels + e] = sum;
        }
    }
}
