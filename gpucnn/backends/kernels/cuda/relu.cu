// ReLU backward in one pass: dx = dy where y > 0, else 0 (y is ReLU's output).
// Grid-stride loop over n elements; every array has n float32 elements, C-contiguous.
extern "C" __global__ void relu_backward(const float* __restrict__ y, const float* __restrict__ dy,
                                         float* __restrict__ dx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}
