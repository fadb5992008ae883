// Max and average pooling on the GPU, one launch per pass (minicnn/kernels/pool.py: launchers
// and NumPy twins; minicnn/functional/pooling.py chooses them on CuPy).
//
// x̃ is x padded by (top, left) in front (and whatever the windows need behind): with `fill`
// for max pooling (-inf: the padding is never the max) and zeros for average pooling (they
// count in the mean, PyTorch's count_include_pad=True). Window (i, j) covers the KH×KW block
// of x̃ at (i·sh, j·sw); the window position of its entry (a, b) is a·KW + b (row-major).
//
// Layouts. x and dout are read through explicit element strides of their logical
// (N, C, ., .) axes, so channels-last and NCHW storage are both read in place; y, dx and the
// argmax are written C-contiguous channels-last, (N, Ho, Wo, C) / (N, H, W, C), so that
// consecutive threads take consecutive channels.
//
// Threads. Every entry point runs one thread per output element e, in a grid-stride loop
//     for (e = blockIdx.x·blockDim.x + threadIdx.x; e < total; e += blockDim.x·gridDim.x)
// so any grid computes the same thing. Pixel indices (n, h, w) fit an int (the launcher
// checks N·H·W and N·Ho·Wo < 2^31); only e is 64-bit. No shared memory and no atomics: the
// backward passes are gathers (docs/architecture.md, "Kernels").

// ---- helpers -------------------------------------------------------------------------------

// Row and column of element e of a C-contiguous matrix with K columns: e = row·K + col (one
// 64-bit division; row and col fit an int).
__device__ __forceinline__ static void split_index(long long e, int K, int& row, int& col) {
    row = (int)(e / K);
    col = (int)(e - (long long)row * K);
}

// (n, h, w) of pixel p = (n·H + h)·W + w.
__device__ __forceinline__ static void unravel_pixel(int p, int H, int W, int& n, int& h,
                                                     int& w) {
    w = p % W;
    const int nh = p / W;
    h = nh % H;
    n = nh / H;
}

// x̃ at (n, c, h + top, w + left): x[n, c, h, w], or `fill` in the padding.
__device__ __forceinline__ static SCALAR pool_read(const SCALAR* __restrict__ x, long long s_n,
                                                   long long s_c, long long s_h, long long s_w,
                                                   int n, int c, int h, int w, int H, int W,
                                                   SCALAR fill) {
    return (h >= 0 && h < H && w >= 0 && w < W) ? x[n * s_n + c * s_c + h * s_h + w * s_w]
                                                : fill;
}

// Σ dout[n, c, i, j] over the windows (i, j) that cover padded pixel (hp, wp), in the order
// a, then b, ascending: for max pooling (by_argmax) only the windows whose max is that pixel,
// for average pooling (argmax not read) all of them. dout is read through its strides
// (d_n, d_c, d_h, d_w); argmax is C-contiguous (N, Ho, Wo, C).
__device__ __forceinline__ static SCALAR pool_gather(
    const SCALAR* __restrict__ dout, const unsigned char* __restrict__ argmax, bool by_argmax,
    long long d_n, long long d_c, long long d_h, long long d_w, int n, int c, int hp, int wp,
    int C, int KH, int KW, int sh, int sw, int Ho, int Wo)
{
    SCALAR sum = 0;
    for (int a = hp % sh; a < KH; a += sh) {                 // a ≡ hp (mod sh): i is whole
        const int i = (hp - a) / sh;
        if (i < 0) break;                                    // a only grows: i only shrinks
        if (i >= Ho) continue;
        for (int b = wp % sw; b < KW; b += sw) {
            const int j = (wp - b) / sw;
            if (j < 0) break;
            if (j >= Wo) continue;
            const long long o = ((long long)(n * Ho + i) * Wo + j) * C + c;
            if (!by_argmax || argmax[o] == a * KW + b)
                sum += dout[n * d_n + c * d_c + i * d_h + j * d_w];
        }
    }
    return sum;
}

// ---- max pooling ---------------------------------------------------------------------------

// y[n, i, j, c] = the max of window (i, j) of x̃, and argmax[n, i, j, c] = the window position
// a·KW + b of its first max: a later entry wins only if strictly greater (ties keep the first,
// minicnn's and PyTorch's rule); a NaN wins over any number and the first NaN stays, as
// NumPy's argmax and maximum do.
//   x: (N, C, H, W) through strides (s_n, s_c, s_h, s_w); fill: -inf.
//   y: (N, Ho, Wo, C); argmax: (N, Ho, Wo, C) bytes, so KH·KW <= 256 (the launcher checks).
//   Threads: one per element of y, grid-stride.
extern "C" __global__ void pool_max_forward(
    const SCALAR* __restrict__ x, SCALAR* __restrict__ y, unsigned char* __restrict__ argmax,
    long long s_n, long long s_c, long long s_h, long long s_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo,
    SCALAR fill)
{
    const long long total = (long long)N * Ho * Wo * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        int pixel, c, n, i, j;
        split_index(e, C, pixel, c);
        unravel_pixel(pixel, Ho, Wo, n, i, j);
        const int h0 = i * sh - top, w0 = j * sw - left;       // the window's corner in x
        SCALAR best = pool_read(x, s_n, s_c, s_h, s_w, n, c, h0, w0, H, W, fill);
        int where = 0;
        for (int k = 1; k < KH * KW; ++k) {
            const SCALAR v = pool_read(x, s_n, s_c, s_h, s_w, n, c, h0 + k / KW, w0 + k % KW,
                                       H, W, fill);
            if (v > best || (v != v && best == best)) {
                best = v;
                where = k;
            }
        }
        y[e] = best;
        argmax[e] = (unsigned char)where;
    }
}

// dx[n, h, w, c] = Σ dout[n, c, i, j] over the windows (i, j) whose max (argmax) is pixel
// (h, w): a gather over the at most ⌈KH/sh⌉·⌈KW/sw⌉ windows that cover the pixel. A pixel no
// window covers gets 0, so dx needs no zero-fill, and overlapping windows (stride < kernel)
// need no atomics.
//   dout: (N, C, Ho, Wo) through strides (d_n, d_c, d_h, d_w); argmax: pool_max_forward's.
//   dx: (N, H, W, C). Threads: one per element of dx, grid-stride.
extern "C" __global__ void pool_max_backward(
    const SCALAR* __restrict__ dout, const unsigned char* __restrict__ argmax,
    SCALAR* __restrict__ dx,
    long long d_n, long long d_c, long long d_h, long long d_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        int pixel, c, n, h, w;
        split_index(e, C, pixel, c);
        unravel_pixel(pixel, H, W, n, h, w);
        dx[e] = pool_gather(dout, argmax, true, d_n, d_c, d_h, d_w, n, c, h + top, w + left, C,
                            KH, KW, sh, sw, Ho, Wo);
    }
}

// ---- average pooling -----------------------------------------------------------------------

// y[n, i, j, c] = (1 / (KH·KW)) Σ over window (i, j) of x̃ (zeros in the padding count).
//   x: (N, C, H, W) through strides (s_n, s_c, s_h, s_w); y: (N, Ho, Wo, C).
//   Threads: one per element of y, grid-stride.
extern "C" __global__ void pool_avg_forward(
    const SCALAR* __restrict__ x, SCALAR* __restrict__ y,
    long long s_n, long long s_c, long long s_h, long long s_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    const long long total = (long long)N * Ho * Wo * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        int pixel, c, n, i, j;
        split_index(e, C, pixel, c);
        unravel_pixel(pixel, Ho, Wo, n, i, j);
        const int h0 = i * sh - top, w0 = j * sw - left;       // the window's corner in x
        SCALAR sum = 0;
        for (int a = 0; a < KH; ++a)
            for (int b = 0; b < KW; ++b)
                sum += pool_read(x, s_n, s_c, s_h, s_w, n, c, h0 + a, w0 + b, H, W, (SCALAR)0);
        y[e] = sum / (SCALAR)(KH * KW);
    }
}

// dx[n, h, w, c] = (1 / (KH·KW)) Σ dout[n, c, i, j] over the windows (i, j) that cover (h, w):
// the gather of pool_max_backward, every window entry getting its share.
//   dout: (N, C, Ho, Wo) through strides (d_n, d_c, d_h, d_w); dx: (N, H, W, C).
//   Threads: one per element of dx, grid-stride.
extern "C" __global__ void pool_avg_backward(
    const SCALAR* __restrict__ dout, SCALAR* __restrict__ dx,
    long long d_n, long long d_c, long long d_h, long long d_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        int pixel, c, n, h, w;
        split_index(e, C, pixel, c);
        unravel_pixel(pixel, H, W, n, h, w);
        dx[e] = pool_gather(dout, nullptr, false, d_n, d_c, d_h, d_w, n, c, h + top, w + left,
                            C, KH, KW, sh, sw, Ho, Wo) / (SCALAR)(KH * KW);
    }
}
