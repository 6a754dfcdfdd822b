// A training batch gathered from the stored images and labels in one launch.
//
// x holds n images of image_size elements each (N, C, H, W) C-contiguous; indices (batch,)
// int64 picks the batch's images. Writes xb (batch, C, H, W) C-contiguous float32 and
// yb (batch,) int64:
//   gather_scale (uint8 pixels):  xb[b, k] = (float)x[indices[b], k] / 255.0f
//   gather_copy (float32 images): xb[b, k] = x[indices[b], k]
//   both:                         yb[b] = y[indices[b]]
// The division is IEEE float32 division (no fast-math), so gather_scale gives exactly
// gpucnn.data.pixels.float_batch's astype(float32) / float32(255), bit for bit. No sums.
// An index outside [0, n) reads nothing: its image is NaN and its label -1 (the loss is
// then NaN and training stops); the CuPy gather it replaces would wrap around silently.
// Grid-stride loops with 64-bit flat indices (a batch can pass 2^31 elements).
// Twins: gpucnn/backends/kernels/pixels.py gather_scale and gather_copy.

extern "C" __global__ void gather_scale(const unsigned char* __restrict__ x, const long long* __restrict__ y,
                                        const long long* __restrict__ indices, float* __restrict__ xb,
                                        long long* __restrict__ yb, long long n, long long batch,
                                        long long image_size) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const float nan = __int_as_float(0x7fc00000);
    const long long total = batch * image_size;
    for (long long i = start; i < total; i += stride) {
        const long long b = i / image_size, k = i - b * image_size;
        const long long src = indices[b];
        xb[i] = (src >= 0 && src < n) ? (float)x[src * image_size + k] / 255.0f : nan;
    }
    for (long long b = start; b < batch; b += stride) {
        const long long src = indices[b];
        yb[b] = (src >= 0 && src < n) ? y[src] : -1;
    }
}

extern "C" __global__ void gather_copy(const float* __restrict__ x, const long long* __restrict__ y,
                                       const long long* __restrict__ indices, float* __restrict__ xb,
                                       long long* __restrict__ yb, long long n, long long batch,
                                       long long image_size) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const float nan = __int_as_float(0x7fc00000);
    const long long total = batch * image_size;
    for (long long i = start; i < total; i += stride) {
        const long long b = i / image_size, k = i - b * image_size;
        const long long src = indices[b];
        xb[i] = (src >= 0 && src < n) ? x[src * image_size + k] : nan;
    }
    for (long long b = start; b < batch; b += stride) {
        const long long src = indices[b];
        yb[b] = (src >= 0 && src < n) ? y[src] : -1;
    }
}
