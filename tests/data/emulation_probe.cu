// A test-only kernel family for tests/cuda_emulation.py (the CPU emulation harness) and
// tests/test_kernels.py (NVRTC): written in the emulatable subset as minicnn/kernels/*.cu are.
// Its twins are NumPy one-liners in tests/test_kernels.py.

__device__ __forceinline__ static SCALAR probe_square(SCALAR v) { return v * v; }

// y[i] = alpha * x[i] + y[i] for i < n: a grid-stride loop, so any grid computes it.
extern "C" __global__ void probe_axpy(const SCALAR* __restrict__ x, SCALAR* __restrict__ y,
                                      SCALAR alpha, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x)
        y[i] = alpha * x[i] + y[i];
}

// Stage 1 of a per-column reduction of the (rows, C) matrix x: the rows are cut into
// `chunks` chunks; partial[k * C + c] = (sum, sum of squares) of x[r, c] over the rows r of
// chunk k (sums[k * C + c], squares[k * C + c]). One thread per (chunk, column), consecutive
// threads on consecutive columns (coalesced reads).
extern "C" __global__ void probe_colsum_partial(const SCALAR* __restrict__ x,
                                                SCALAR* __restrict__ sums,
                                                SCALAR* __restrict__ squares,
                                                long long rows, int C, int chunks) {
    const long long rows_per_chunk = (rows + chunks - 1) / chunks;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         t < (long long)chunks * C; t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C;
        const int c = (int)(t % C);
        const long long r_end = min(rows, (k + 1) * rows_per_chunk);
        SCALAR s = 0, q = 0;
        for (long long r = k * rows_per_chunk; r < r_end; ++r) {
            const SCALAR v = x[r * C + c];
            s += v;
            q += probe_square(v);
        }
        sums[t] = s;
        squares[t] = q;
    }
}

// Stage 2: mean[c] and the biased variance var[c] from the partials (one thread per column,
// looping over the chunks in order: deterministic, no atomics).
extern "C" __global__ void probe_colsum_finalize(const SCALAR* __restrict__ sums,
                                                 const SCALAR* __restrict__ squares,
                                                 SCALAR* __restrict__ mean,
                                                 SCALAR* __restrict__ var,
                                                 long long rows, int C, int chunks) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        SCALAR s = 0, q = 0;
        for (int k = 0; k < chunks; ++k) {
            s += sums[(long long)k * C + c];
            q += squares[(long long)k * C + c];
        }
        const SCALAR m = s / (SCALAR)rows;
        mean[c] = m;
        var[c] = fmax(q / (SCALAR)rows - m * m, (SCALAR)0);
    }
}
