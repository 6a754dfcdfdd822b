// Softmax cross-entropy in one launch: the mean loss, its gradient and the correct count.
//
// ONE block; thread t owns rows t, t + blockDim.x, ... and loops over the row's classes
// (the class counts gpucnn trains, 2-1000, fit one thread's loop; a row is read three times,
// from L1/L2 after the first). For logits z (n, classes) C-contiguous float32 and int64
// labels y (n,), with label smoothing e (the target is (1 - e) onehot(y) + e / classes):
//
//   m_i = max_j z_ij, a_i = the FIRST j reaching it (as argmax), sh_ij = z_ij - m_i
//   lse_i = logf(sum_j expf(sh_ij))                                    (stable log-sum-exp)
//   row_i = lse_i - sh_iy                       if smoothing == 0
//         = keep * (lse_i - sh_iy) + smoothing * (lse_i - (sum_j sh_ij) / classes)  otherwise
//   dlogits_ij = (expf(sh_ij - lse_i) [- spread] [- keep if j == y_i]) * inv_n
//   loss[0] = (sum_i row_i) / n;   correct[0] += #{i : a_i == y_i}   (if count_correct)
//
// keep = float32(1 - e), spread = float32(e / classes), inv_n = float32(1 / n) come from the
// host (as SoftmaxCrossEntropy's generic path rounds them). Float32 accumulation throughout:
// the class sums run j = 0, 1, ... in order; each thread sums its rows in order, then a
// shared-memory tree adds the threads' partial sums in a fixed order: deterministic.
// (NVRTC may contract keep * nll + smoothing * (...) into an FMA: one rounding fewer,
// inside the same bound.)
// A label outside [0, classes) reads nothing: its row's loss is NaN (training then stops
// with NonFiniteLossError) and its gradient row has no target subtracted.
// Twin: gpucnn/backends/kernels/loss.py softmax_ce (same formula; NumPy sums the classes pairwise,
// so the two agree within a float32 rounding bound, not bit for bit; argmax and the
// correct count agree exactly).

#define MAX_THREADS 1024

extern "C" __global__ void softmax_ce(const float* __restrict__ logits, const long long* __restrict__ labels,
                                      float* __restrict__ dlogits, float* __restrict__ loss,
                                      long long* __restrict__ correct, int n, int classes, float keep,
                                      float smoothing, float spread, float inv_n, int count_correct) {
    __shared__ float loss_part[MAX_THREADS];
    __shared__ long long hit_part[MAX_THREADS];
    const int tid = threadIdx.x;
    const float nan = __int_as_float(0x7fc00000);
    float my_loss = 0.0f;  // float32 accumulation, this thread's rows in order
    long long my_hits = 0;
    for (int i = tid; i < n; i += blockDim.x) {
        const float* z = logits + (long long)i * classes;
        float* d = dlogits + (long long)i * classes;
        const long long y = labels[i];
        const bool valid = y >= 0 && y < classes;
        float m = z[0];
        int first = 0;
        for (int j = 1; j < classes; ++j) {
            if (z[j] > m) {  // strictly greater: the first maximum wins ties
                m = z[j];
                first = j;
            }
        }
        float sum_exp = 0.0f, sum_shifted = 0.0f;  // float32, j in order
        for (int j = 0; j < classes; ++j) {
            const float sh = z[j] - m;
            sum_exp += expf(sh);
            sum_shifted += sh;
        }
        const float lse = logf(sum_exp);
        float row = nan;
        if (valid) {
            const float nll = lse - (z[y] - m);
            row = smoothing != 0.0f ? keep * nll + smoothing * (lse - sum_shifted / (float)classes) : nll;
        }
        my_loss += row;
        my_hits += (valid && first == y) ? 1 : 0;
        for (int j = 0; j < classes; ++j) {
            float g = expf((z[j] - m) - lse);  // softmax
            if (smoothing != 0.0f) g -= spread;
            if (valid && j == y) g -= keep;
            d[j] = g * inv_n;
        }
    }
    loss_part[tid] = my_loss;
    hit_part[tid] = my_hits;
    __syncthreads();
    for (int s = MAX_THREADS / 2; s > 0; s >>= 1) {  // fixed order for any blockDim.x <= 1024
        if (tid < s && tid + s < (int)blockDim.x) {
            loss_part[tid] += loss_part[tid + s];
            hit_part[tid] += hit_part[tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        loss[0] = loss_part[0] / (float)n;
        if (count_correct) correct[0] += hit_part[0];  // one block: no other writer
    }
}
