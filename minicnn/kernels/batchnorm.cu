// BatchNorm (BatchNorm1d / BatchNorm2d) on the GPU: statistics, normalisation and optional
// ReLU, forward and backward, in a few launches. Launchers and NumPy twins:
// minicnn/kernels/batchnorm.py; the formulas: docs/derivations/batchnorm.md.
//
// Every array is read as the (M, C) matrix of BatchNorm: row r = n * S + s runs over the
// N samples and the S = H * W (or L, or 1) positions of each, column c over the C channels.
// Element (r, c) lies at
//
//     n * sN + s * sS + c * sC          (n = r / S, s = r % S; strides in elements)
//
// of a C-contiguous buffer, so one kernel reads NCHW (sN = C*S, sS = 1, sC = S) and
// channels-last NHWC (sN = S*C, sS = C, sC = 1) storage alike, without a copy. Outputs are
// written with the strides of the input: a channels-last input gives a channels-last output.
//
// Work split: one thread per (chunk k, channel c), t = k·C + c, in a grid-stride loop
//     for (t = blockIdx.x·blockDim.x + threadIdx.x; t < chunks·C; t += blockDim.x·gridDim.x)
// A chunk is a run of consecutive rows; the threads of a warp take consecutive channels of the
// same rows, so the reads are coalesced on channels-last data. Each thread walks its rows with
// (n, s) counters (no division per element). A per-channel reduction is two launches (partial
// sums per chunk, then a loop over the chunks in a fixed order): deterministic, no atomics, no
// shared memory, and the result does not depend on the grid (the chunk counts are arguments).

// ---- helpers -------------------------------------------------------------------------------

// Rows per chunk when the M rows are split into `chunks` chunks: ⌈M / chunks⌉.
__device__ __forceinline__ static long long bn_rows_per_chunk(long long M, long long chunks) {
    return (M + chunks - 1) / chunks;
}

// The last row (exclusive) of chunk k of L rows.
__device__ __forceinline__ static long long bn_chunk_end(long long k, long long L, long long M) {
    return (k + 1) * L < M ? (k + 1) * L : M;
}

// Where element (row n·S + s, channel c) lies, given the strides of sample, position, channel.
__device__ __forceinline__ static long long bn_at(long long n, long long s, long long c,
                                                  long long sN, long long sS, long long sC) {
    return n * sN + s * sS + c * sC;
}

// (n, s) of the next row: the next position, or the first position of the next sample.
__device__ __forceinline__ static void bn_next_row(long long& n, long long& s, long long S) {
    if (++s == S) { s = 0; ++n; }
}

// The sums over the P chunks, in chunk order, of channel c's two partial sums in part (2, P, C).
__device__ __forceinline__ static void bn_sum_partials(const SCALAR* part, long long P, int C,
                                                       long long c, SCALAR& first,
                                                       SCALAR& second) {
    first = 0;
    second = 0;
    for (long long k = 0; k < P; ++k) {
        first += part[k * C + c];
        second += part[(P + k) * C + c];
    }
}

// The gradient g that reaches the BatchNorm: dout[g_at], or 0 where the fused ReLU (relu != 0)
// cut its output (y[y_at] <= 0 or NaN).
__device__ __forceinline__ static SCALAR bn_grad(const SCALAR* dout, const SCALAR* y,
                                                 long long g_at, long long y_at, int relu) {
    const SCALAR g = dout[g_at];
    return relu && !(y[y_at] > 0) ? (SCALAR)0 : g;
}

// ---- forward, batch statistics -------------------------------------------------------------

// Partial sums of chunk k, shifted by the channel's first value K = x[row 0, c] so that a
// large mean does not cancel in float32 (var = E[d²] - E[d]² with d = x - K, |E[d]| ~ std):
//     part[0, k, c] = Σ (x - K),   part[1, k, c] = Σ (x - K)²      over the rows of chunk k.
//   x: (M, C) through (sN, sS, sC); part: (2, P, C).
//   Threads: one per (chunk k, channel c), t = k·C + c < P·C, grid-stride.
extern "C" __global__ void bn_forward_partials(
    const SCALAR* x, SCALAR* part, long long M, int C, long long S,
    long long sN, long long sS, long long sC, long long P)
{
    const long long threads = P * C;                    // one per (chunk k, channel c)
    const long long L = bn_rows_per_chunk(M, P);
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < threads;
         t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C, c = t % C;
        const SCALAR K = x[c * sC];
        SCALAR sum_d = 0, sum_d2 = 0;
        const long long r0 = k * L, r1 = bn_chunk_end(k, L, M);
        long long n = r0 / S, s = r0 % S;
        for (long long r = r0; r < r1; ++r) {
            const SCALAR d = x[bn_at(n, s, c, sN, sS, sC)] - K;
            sum_d += d;
            sum_d2 += d * d;
            bn_next_row(n, s, S);
        }
        part[t] = sum_d;
        part[threads + t] = sum_d2;
    }
}

// The statistics of channel c from the P partial sums (in chunk order), and the running
// averages (PyTorch's rule, unbiased variance):
//     mean = K + Σd / M,   var = Σd² / M - (Σd / M)²   (biased),   inv_std = 1 / sqrt(var + eps)
//     new_running_mean = (1 - momentum) * running_mean + momentum * mean
//     new_running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
//   part: bn_forward_partials' (2, P, C); every other array (C,).
//   Threads: one per channel, grid-stride.
extern "C" __global__ void bn_forward_finalize(
    const SCALAR* x, const SCALAR* part, const SCALAR* running_mean, const SCALAR* running_var,
    SCALAR* mean, SCALAR* inv_std, SCALAR* new_running_mean, SCALAR* new_running_var,
    long long M, int C, long long sC, long long P, SCALAR eps, SCALAR momentum)
{
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < C;
         c += (long long)blockDim.x * gridDim.x) {
        SCALAR sum_d, sum_d2;
        bn_sum_partials(part, P, C, c, sum_d, sum_d2);
        const SCALAR m = (SCALAR)M;
        const SCALAR mean_d = sum_d / m;
        const SCALAR var_raw = sum_d2 / m - mean_d * mean_d;
        const SCALAR var = var_raw > 0 ? var_raw : (SCALAR)0;   // rounding can dip below 0
        const SCALAR mu = x[c * sC] + mean_d;
        mean[c] = mu;
        inv_std[c] = 1 / sqrt(var + eps);
        const SCALAR keep = 1 - momentum;
        new_running_mean[c] = keep * running_mean[c] + momentum * mu;
        new_running_var[c] = keep * running_var[c] + momentum * (var * (m / (SCALAR)(M - 1)));
    }
}

// ---- forward, normalisation ----------------------------------------------------------------

// y = (x - mean) * (gamma * inv_std) + beta for the rows [r0, r1) of channel c, then
// y = max(y, 0) when relu != 0 (NaN passes, as NumPy's maximum). y has x's strides.
__device__ __forceinline__ static void bn_apply_rows(
    const SCALAR* x, SCALAR* y, SCALAR mu, SCALAR scale, SCALAR shift, long long r0,
    long long r1, long long c, long long S, long long sN, long long sS, long long sC, int relu)
{
    long long n = r0 / S, s = r0 % S;
    for (long long r = r0; r < r1; ++r) {
        const long long at = bn_at(n, s, c, sN, sS, sC);
        const SCALAR v = (x[at] - mu) * scale + shift;
        y[at] = relu && v < 0 ? (SCALAR)0 : v;
        bn_next_row(n, s, S);
    }
}

// Training forward: y = bn_apply_rows with the batch statistics of bn_forward_finalize.
//   x, y: (M, C) through (sN, sS, sC); mean, inv_std, gamma, beta: (C,).
//   Threads: one per (chunk k, channel c) of Q chunks, t = k·C + c < Q·C, grid-stride.
extern "C" __global__ void bn_forward_apply(
    const SCALAR* x, const SCALAR* mean, const SCALAR* inv_std, const SCALAR* gamma,
    const SCALAR* beta, SCALAR* y, long long M, int C, long long S,
    long long sN, long long sS, long long sC, long long Q, int relu)
{
    const long long threads = Q * C;                    // one per (chunk k, channel c)
    const long long L = bn_rows_per_chunk(M, Q);
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < threads;
         t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C, c = t % C;
        bn_apply_rows(x, y, mean[c], gamma[c] * inv_std[c], beta[c], k * L,
                      bn_chunk_end(k, L, M), c, S, sN, sS, sC, relu);
    }
}

// Evaluation forward, one launch: y = bn_apply_rows with the running statistics; the threads
// of chunk 0 also write inv_std = 1 / sqrt(running_var + eps) (C,), which backward needs.
//   x, y: (M, C) through (sN, sS, sC); the other arrays (C,).
//   Threads: one per (chunk k, channel c) of Q chunks, t = k·C + c < Q·C, grid-stride.
extern "C" __global__ void bn_eval_apply(
    const SCALAR* x, const SCALAR* running_mean, const SCALAR* running_var, const SCALAR* gamma,
    const SCALAR* beta, SCALAR* y, SCALAR* inv_std, long long M, int C, long long S,
    long long sN, long long sS, long long sC, long long Q, SCALAR eps, int relu)
{
    const long long threads = Q * C;                    // one per (chunk k, channel c)
    const long long L = bn_rows_per_chunk(M, Q);
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < threads;
         t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C, c = t % C;
        const SCALAR is = 1 / sqrt(running_var[c] + eps);
        if (k == 0) inv_std[c] = is;
        bn_apply_rows(x, y, running_mean[c], gamma[c] * is, beta[c], k * L,
                      bn_chunk_end(k, L, M), c, S, sN, sS, sC, relu);
    }
}

// ---- backward ------------------------------------------------------------------------------
// g = dout, or dout * [y > 0] when the ReLU after the BatchNorm was fused (relu != 0);
// x_hat = (x - mean) * inv_std (the batch's or the running statistics).
// dout has its own strides (gN, gS, gC); x, y and dx share (sN, sS, sC).

// Partial sums of chunk k: part[0, k, c] = Σ g * x_hat (-> dgamma), part[1, k, c] = Σ g
// (-> dbeta). y is not read when relu == 0.
//   part: (2, P, C); mean, inv_std: (C,).
//   Threads: one per (chunk k, channel c), t = k·C + c < P·C, grid-stride.
extern "C" __global__ void bn_backward_partials(
    const SCALAR* dout, const SCALAR* x, const SCALAR* y, const SCALAR* mean,
    const SCALAR* inv_std, SCALAR* part, long long M, int C, long long S,
    long long gN, long long gS, long long gC, long long sN, long long sS, long long sC,
    long long P, int relu)
{
    const long long threads = P * C;                    // one per (chunk k, channel c)
    const long long L = bn_rows_per_chunk(M, P);
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < threads;
         t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C, c = t % C;
        const SCALAR mu = mean[c], is = inv_std[c];
        SCALAR sum_g_x_hat = 0, sum_g = 0;
        const long long r0 = k * L, r1 = bn_chunk_end(k, L, M);
        long long n = r0 / S, s = r0 % S;
        for (long long r = r0; r < r1; ++r) {
            const long long at = bn_at(n, s, c, sN, sS, sC);
            const SCALAR g = bn_grad(dout, y, bn_at(n, s, c, gN, gS, gC), at, relu);
            sum_g_x_hat += g * ((x[at] - mu) * is);
            sum_g += g;
            bn_next_row(n, s, S);
        }
        part[t] = sum_g_x_hat;
        part[threads + t] = sum_g;
    }
}

// dx for the rows of chunk k of channel c, after summing the channel's P partials (every
// thread of the channel adds them in the same order, so all get the same bits):
//     dgamma = Σ g * x_hat,   dbeta = Σ g        (written by the threads of chunk 0)
//     batch statistics (batch_stats != 0):
//         dx = gamma * inv_std * (g - dbeta / M - x_hat * dgamma / M)
//     running statistics (an affine map):  dx = gamma * inv_std * g
//   part: bn_backward_partials'; dx: x's strides; dgamma, dbeta: (C,).
//   Threads: one per (chunk k, channel c), the chunks of bn_backward_partials, grid-stride.
extern "C" __global__ void bn_backward_dx(
    const SCALAR* dout, const SCALAR* x, const SCALAR* y, const SCALAR* mean,
    const SCALAR* inv_std, const SCALAR* gamma, const SCALAR* part, SCALAR* dx,
    SCALAR* dgamma, SCALAR* dbeta, long long M, int C, long long S,
    long long gN, long long gS, long long gC, long long sN, long long sS, long long sC,
    long long P, int relu, int batch_stats)
{
    const long long threads = P * C;                    // one per (chunk k, channel c)
    const long long L = bn_rows_per_chunk(M, P);
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < threads;
         t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C, c = t % C;
        SCALAR sum_g_x_hat, sum_g;
        bn_sum_partials(part, P, C, c, sum_g_x_hat, sum_g);
        if (k == 0) {
            dgamma[c] = sum_g_x_hat;
            dbeta[c] = sum_g;
        }
        const SCALAR mu = mean[c], is = inv_std[c];
        const SCALAR scale = gamma[c] * is;
        const SCALAR mean_g = sum_g / (SCALAR)M;
        const SCALAR mean_g_x_hat = sum_g_x_hat / (SCALAR)M;
        const long long r0 = k * L, r1 = bn_chunk_end(k, L, M);
        long long n = r0 / S, s = r0 % S;
        for (long long r = r0; r < r1; ++r) {
            const long long at = bn_at(n, s, c, sN, sS, sC);
            const SCALAR g = bn_grad(dout, y, bn_at(n, s, c, gN, gS, gC), at, relu);
            dx[at] = batch_stats ? scale * (g - mean_g - (x[at] - mu) * is * mean_g_x_hat)
                                 : scale * g;
            bn_next_row(n, s, S);
        }
    }
}
