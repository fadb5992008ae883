// Max and average pooling on the GPU, one launch per pass (minicnn/kernels/pool.py: launchers
// and NumPy twins; minicnn/functional/pooling.py chooses them on CuPy).
//
// x̃ is x padded by (top, left) in front (and whatever the windows need behind): with `fill`
// for max pooling (-inf: the padding is never the max) and zeros for average pooling (they
// count in the mean, PyTorch's count_include_pad=True). x and dout are read through explicit
// element strides of their logical (N, C, ., .) axes, so channels-last and NCHW storage are
// both read in place; y, dx and the argmax are written C-contiguous channels-last
// (N, Ho, Wo, C) / (N, H, W, C): consecutive threads on consecutive channels.
//
// Written in the emulatable subset (docs/architecture.md, "Kernels"): grid-stride loops, one
// output element per thread, no shared memory, no atomics (the backward passes are gathers).

// The entry of x̃ at (n, c, h + top, w + left), i.e. x[n, c, h, w] or `fill` in the padding.
__device__ __forceinline__ static SCALAR pool_read(const SCALAR* __restrict__ x, long long s_n,
                                                   long long s_c, long long s_h, long long s_w,
                                                   int n, int c, int h, int w, int H, int W,
                                                   SCALAR fill) {
    return (h >= 0 && h < H && w >= 0 && w < W) ? x[n * s_n + c * s_c + h * s_h + w * s_w]
                                                : fill;
}

// y[n, i, j, c] = max over the window of x̃, and argmax[n, i, j, c] = the first window
// position a·KW + b (row-major) holding it: a later entry wins only if strictly greater
// (ties keep the first, minicnn's and PyTorch's rule); a NaN wins over any number and the
// first NaN stays, as NumPy's argmax and maximum do. KH·KW <= 256 (the launcher checks).
extern "C" __global__ void pool_max_forward(const SCALAR* __restrict__ x, SCALAR* __restrict__ y,
                                            unsigned char* __restrict__ argmax, long long s_n,
                                            long long s_c, long long s_h, long long s_w, int N,
                                            int C, int H, int W, int KH, int KW, int sh, int sw,
                                            int top, int left, int Ho, int Wo, SCALAR fill) {
    const long long total = (long long)N * Ho * Wo * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pixel = (int)(e / C);
        const int c = (int)(e - (long long)pixel * C);
        const int j = pixel % Wo;
        const int ni = pixel / Wo;
        const int i = ni % Ho, n = ni / Ho;
        const int h0 = i * sh - top, w0 = j * sw - left;
        SCALAR best = pool_read(x, s_n, s_c, s_h, s_w, n, c, h0, w0, H, W, fill);
        int where = 0;
        for (int k = 1; k < KH * KW; ++k) {
            const int a = k / KW, b = k - (k / KW) * KW;
            const SCALAR v = pool_read(x, s_n, s_c, s_h, s_w, n, c, h0 + a, w0 + b, H, W, fill);
            if (v > best || (v != v && best == best)) {
                best = v;
                where = k;
            }
        }
        y[e] = best;
        argmax[e] = (unsigned char)where;
    }
}

// dx[n, h, w, c] = Σ dout[n, c, i, j] over the windows (i, j) whose max is pixel (h, w): a
// gather, one thread per input pixel, over the at most ⌈KH/sh⌉·⌈KW/sw⌉ windows that cover it
// (kernel rows a ≡ h + top mod sh), in the order a, then b, ascending. Pixels no window covers
// get 0; so dx needs no zero-fill, and overlapping windows (stride < kernel) need no atomics.
extern "C" __global__ void pool_max_backward(const SCALAR* __restrict__ dout,
                                             const unsigned char* __restrict__ argmax,
                                             SCALAR* __restrict__ dx, long long d_n,
                                             long long d_c, long long d_h, long long d_w, int N,
                                             int C, int H, int W, int KH, int KW, int sh, int sw,
                                             int top, int left, int Ho, int Wo) {
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pixel = (int)(e / C);
        const int c = (int)(e - (long long)pixel * C);
        const int w = pixel % W;
        const int nh = pixel / W;
        const int h = nh % H, n = nh / H;
        const int hp = h + top, wp = w + left;
        SCALAR sum = 0;
        for (int a = hp % sh; a < KH; a += sh) {
            const int i = (hp - a) / sh;
            if (i < 0) break;
            if (i >= Ho) continue;
            for (int b = wp % sw; b < KW; b += sw) {
                const int j = (wp - b) / sw;
                if (j < 0) break;
                if (j >= Wo) continue;
                const long long o = ((long long)(n * Ho + i) * Wo + j) * C + c;
                if (argmax[o] == a * KW + b) sum += dout[n * d_n + c * d_c + i * d_h + j * d_w];
            }
        }
        dx[e] = sum;
    }
}

// y[n, i, j, c] = (1 / (KH·KW)) Σ over the window of x̃ (zeros in the padding count).
extern "C" __global__ void pool_avg_forward(const SCALAR* __restrict__ x, SCALAR* __restrict__ y,
                                            long long s_n, long long s_c, long long s_h,
                                            long long s_w, int N, int C, int H, int W, int KH,
                                            int KW, int sh, int sw, int top, int left, int Ho,
                                            int Wo) {
    const long long total = (long long)N * Ho * Wo * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pixel = (int)(e / C);
        const int c = (int)(e - (long long)pixel * C);
        const int j = pixel % Wo;
        const int ni = pixel / Wo;
        const int i = ni % Ho, n = ni / Ho;
        SCALAR sum = 0;
        for (int a = 0; a < KH; ++a)
            for (int b = 0; b < KW; ++b)
                sum += pool_read(x, s_n, s_c, s_h, s_w, n, c, i * sh - top + a, j * sw - left + b,
                                 H, W, (SCALAR)0);
        y[e] = sum / (SCALAR)(KH * KW);
    }
}

// dx[n, h, w, c] = (1 / (KH·KW)) Σ dout[n, c, i, j] over the windows (i, j) that cover (h, w):
// the same gather as pool_max_backward, every window entry getting its share.
extern "C" __global__ void pool_avg_backward(const SCALAR* __restrict__ dout,
                                             SCALAR* __restrict__ dx, long long d_n,
                                             long long d_c, long long d_h, long long d_w, int N,
                                             int C, int H, int W, int KH, int KW, int sh, int sw,
                                             int top, int left, int Ho, int Wo) {
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pixel = (int)(e / C);
        const int c = (int)(e - (long long)pixel * C);
        const int w = pixel % W;
        const int nh = pixel / W;
        const int h = nh % H, n = nh / H;
        const int hp = h + top, wp = w + left;
        SCALAR sum = 0;
        for (int a = hp % sh; a < KH; a += sh) {
            const int i = (hp - a) / sh;
            if (i < 0) break;
            if (i >= Ho) continue;
            for (int b = wp % sw; b < KW; b += sw) {
                const int j = (wp - b) / sw;
                if (j < 0) break;
                if (j >= Wo) continue;
                sum += dout[n * d_n + c * d_c + i * d_h + j * d_w];
            }
        }
        dx[e] = sum / (SCALAR)(KH * KW);
    }
}
