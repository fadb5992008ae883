// The convolution's data movement on the GPU: im2col and col2im as one gather each, and the
// per-channel sum of dout that is the bias gradient (minicnn/kernels/im2col.py: launchers and
// NumPy twins; minicnn/functional/im2col.py and conv.py choose them on CuPy).
//
// Layouts. x is read through explicit element strides (s_n, s_c, s_h, s_w) of its logical
// (N, C, H, W) axes, so an NCHW- or an NHWC-stored array is read in place. The patch matrix
// cols (N·Ho·Wo, KH·KW·C) is C-contiguous, rows (n, i, j), columns (a, b, c) with the channel
// innermost: cols[(n, i, j), (a, b, c)] = x[n, c, i·sh + a - top, j·sw + b - left], zero where
// that pixel lies in the padding. Consecutive threads write consecutive columns, and for a
// channels-last x they also read consecutive channels.
//
// Threads. Every entry point runs one thread per output element e, in a grid-stride loop
//     for (e = blockIdx.x·blockDim.x + threadIdx.x; e < total; e += blockDim.x·gridDim.x)
// so any grid computes the same thing. Row and pixel indices fit an int (the launcher checks
// N·Ho·Wo and N·H·W < 2^31); only e is 64-bit. No shared memory and no atomics
// (docs/architecture.md, "Kernels").

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

// ---- im2col and col2im ---------------------------------------------------------------------

// cols[(n, i, j), (a, b, c)] = x̃[n, c, i·sh + a, j·sw + b], x zero-padded by (top, left) in
// front; the padding is a bounds test (no padded copy of x). Entry e of cols, C-contiguous.
__device__ __forceinline__ static SCALAR im2col_entry(
    const SCALAR* __restrict__ x, long long e, long long s_n, long long s_c, long long s_h,
    long long s_w, int C, int H, int W, int KW, int sh, int sw, int top, int left, int Ho,
    int Wo, int K)
{
    int row, col, n, i, j;
    split_index(e, K, row, col);
    const int c = col % C, ab = col / C;                       // col = (a·KW + b)·C + c
    const int a = ab / KW, b = ab % KW;
    unravel_pixel(row, Ho, Wo, n, i, j);
    const int h = i * sh + a - top, w = j * sw + b - left;
    return (h >= 0 && h < H && w >= 0 && w < W) ? x[n * s_n + c * s_c + h * s_h + w * s_w]
                                                : (SCALAR)0;
}

// The grid-stride loop over the N·Ho·Wo·K entries e of cols: STORE writes entry e from its
// value v (the entry points below differ only in how they store it).
#define IM2COL_FOR(STORE)                                                                   \
    const int K = KH * KW * C;                                                              \
    const long long total = (long long)N * Ho * Wo * K;                                     \
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;          \
         e += (long long)blockDim.x * gridDim.x) {                                          \
        const SCALAR v = im2col_entry(x, e, s_n, s_c, s_h, s_w, C, H, W, KW, sh, sw, top,    \
                                      left, Ho, Wo, K);                                     \
        STORE;                                                                              \
    }

//   x: (N, C, H, W) through strides (s_n, s_c, s_h, s_w); cols: (N·Ho·Wo, KH·KW·C).
//   Threads: one per entry of cols, grid-stride.
extern "C" __global__ void im2col_gather(
    const SCALAR* __restrict__ x, SCALAR* __restrict__ cols,
    long long s_n, long long s_c, long long s_h, long long s_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    IM2COL_FOR(cols[e] = v)
}

// The same patches stored in 16 bits, for a GEMM of the bf16 or fp16 precision policy
// (minicnn/kernels/gemm16.py): one pass writes half the bytes, where im2col and then a
// conversion would write, read and write again. Each value rounded to nearest, ties to even.
//
// bfloat16: float32's top half, rounded (as gemm16_float_to_bf16 in gemm16.cu); a NaN keeps
// its top half with the quiet bit set.
__device__ __forceinline__ static unsigned short bf16_bits(float v) {
    const unsigned int u = __float_as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x0040u);
    return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// IEEE half: 5 exponent bits (bias 15), 10 mantissa bits; as NumPy's astype(float16):
//   |v| >= 65520 (the tie above the largest half, 65504): ±inf;
//   |v| >= 2^-14 (normal): exponent rebased by 127 - 15, the mantissa rounded from 23 bits to
//       10 (a carry rounds up into the next binade);
//   smaller: a subnormal, round(|v| / 2^-24), ties to even (up to 1024, the smallest normal);
//   NaN: the top 10 mantissa bits, or 1 if they are all zero (it must stay a NaN).
__device__ __forceinline__ static unsigned short fp16_bits(float v) {
    const unsigned int u = __float_as_uint(v);
    const unsigned int sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) {
        const unsigned int payload = (a >> 13) & 0x3FFu;
        return (unsigned short)(sign | 0x7C00u | (payload ? payload : 1u));
    }
    if (a >= 0x477FF000u) return (unsigned short)(sign | 0x7C00u);
    if (a >= 0x38800000u) {
        const unsigned int r = a - 0x38000000u;                 // exponent - (127 - 15)
        return (unsigned short)(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
    }
    const int shift = 126 - (int)(a >> 23);                     // >= 14
    if (shift > 24) return (unsigned short)sign;                // below 2^-25: rounds to 0
    const unsigned int m = (a & 0x7FFFFFu) | 0x800000u, half = 1u << (shift - 1);
    const unsigned int q = m >> shift, rest = m & ((1u << shift) - 1u);
    return (unsigned short)(sign | (q + ((rest > half || (rest == half && (q & 1u))) ? 1u : 0u)));
}

extern "C" __global__ void im2col_gather_bf16(
    const SCALAR* __restrict__ x, unsigned short* __restrict__ cols,
    long long s_n, long long s_c, long long s_h, long long s_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    IM2COL_FOR(cols[e] = bf16_bits((float)v))
}

extern "C" __global__ void im2col_gather_fp16(
    const SCALAR* __restrict__ x, unsigned short* __restrict__ cols,
    long long s_n, long long s_c, long long s_h, long long s_w,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    IM2COL_FOR(cols[e] = fp16_bits((float)v))
}

// col2im, the adjoint of im2col, as a gather (no atomics): each pixel of dx sums the entries
// of dcols that were copied from it,
//     dx[n, h, w, c] = Σ dcols[(n, i, j), (a, b, c)]  over i·sh + a - top = h, j·sw + b - left = w
// in the order a, then b, ascending: the kernel rows a that reach row h are those with
// a ≡ h + top (mod sh), 0 <= a < KH and 0 <= (h + top - a) / sh < Ho (the same for b).
//   dcols: (N·Ho·Wo, KH·KW·C) C-contiguous; dx: (N, H, W, C) C-contiguous (channels-last).
//   Threads: one per element of dx, grid-stride.
extern "C" __global__ void col2im_gather(
    const SCALAR* __restrict__ dcols, SCALAR* __restrict__ dx,
    int N, int C, int H, int W, int KH, int KW, int sh, int sw, int top, int left, int Ho, int Wo)
{
    const int K = KH * KW * C;
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        int pixel, c, n, h, w;
        split_index(e, C, pixel, c);
        unravel_pixel(pixel, H, W, n, h, w);
        const int hp = h + top, wp = w + left;                 // the pixel in padded coordinates
        SCALAR sum = 0;
        for (int a = hp % sh; a < KH; a += sh) {             // a ≡ hp (mod sh): i is whole
            const int i = (hp - a) / sh;
            if (i < 0) break;                                // a only grows: i only shrinks
            if (i >= Ho) continue;
            for (int b = wp % sw; b < KW; b += sw) {
                const int j = (wp - b) / sw;
                if (j < 0) break;
                if (j >= Wo) continue;
                sum += dcols[((long long)(n * Ho + i) * Wo + j) * K + (a * KW + b) * C + c];
            }
        }
        dx[e] = sum;
    }
}

// ---- the bias gradient ---------------------------------------------------------------------

// db[c] = Σ_r dout[r, c] over the rows of the C-contiguous channels-last (rows, C) matrix, in
// two launches, deterministic (no atomics). Stage 1: partial[k, c] = the sum over chunk k of
// ⌈rows / chunks⌉ consecutive rows. Threads: one per (chunk k, channel c), grid-stride over
// chunks·C; consecutive threads take consecutive channels (coalesced reads).
extern "C" __global__ void conv_bias_grad_partial(const SCALAR* __restrict__ dout,
                                                  SCALAR* __restrict__ partial, long long rows,
                                                  int C, int chunks) {
    const long long rows_per_chunk = (rows + chunks - 1) / chunks;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
         t < (long long)chunks * C; t += (long long)blockDim.x * gridDim.x) {
        const long long k = t / C;
        const int c = (int)(t - k * C);
        const long long r_end = min(rows, (k + 1) * rows_per_chunk);
        SCALAR s = 0;
        for (long long r = k * rows_per_chunk; r < r_end; ++r) s += dout[r * C + c];
        partial[t] = s;
    }
}

// Stage 2: db[c] = Σ_k partial[k, c], the chunks in order. partial: (chunks, C); db: (C,).
// Threads: one per channel, grid-stride.
extern "C" __global__ void conv_bias_grad_finish(const SCALAR* __restrict__ partial,
                                                 SCALAR* __restrict__ db, int C, int chunks) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        SCALAR s = 0;
        for (int k = 0; k < chunks; ++k) s += partial[(long long)k * C + c];
        db[c] = s;
    }
}
