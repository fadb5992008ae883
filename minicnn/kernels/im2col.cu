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
// Written in the emulatable subset (docs/architecture.md, "Kernels"): grid-stride loops over
// one element per thread, no shared memory, no atomics; the result does not depend on the grid.

// im2col: one thread per entry of cols, the zero padding done by the bounds test (no padded
// copy of x). Row indices (n, i, j) fit an int (the launcher checks N·Ho·Wo < 2^31); only the
// flat index is 64-bit, so each entry costs one 64-bit division.
extern "C" __global__ void im2col_gather(const SCALAR* __restrict__ x, SCALAR* __restrict__ cols,
                                         long long s_n, long long s_c, long long s_h,
                                         long long s_w, int N, int C, int H, int W, int KH,
                                         int KW, int sh, int sw, int top, int left, int Ho,
                                         int Wo) {
    const int K = KH * KW * C;
    const long long total = (long long)N * Ho * Wo * K;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int row = (int)(e / K);
        const int col = (int)(e - (long long)row * K);
        const int c = col % C;
        const int ab = col / C;
        const int a = ab / KW, b = ab - (ab / KW) * KW;
        const int j = row % Wo;
        const int ni = row / Wo;
        const int i = ni % Ho, n = ni / Ho;
        const int h = i * sh + a - top, w = j * sw + b - left;
        cols[e] = (h >= 0 && h < H && w >= 0 && w < W)
                      ? x[n * s_n + c * s_c + h * s_h + w * s_w]
                      : (SCALAR)0;
    }
}

// col2im, the adjoint of im2col, as a gather (no atomics): one thread per input pixel (n, h, w, c)
// of dx, stored channels-last (N, H, W, C) C-contiguous, sums the entries of dcols that were
// copied from it:
//     dx[n, h, w, c] = Σ dcols[(n, i, j), (a, b, c)]  over i·sh + a - top = h, j·sw + b - left = w
// in the order a, then b, ascending. The kernel rows a that reach row h are those with
// a ≡ h + top (mod sh), 0 <= a < KH and 0 <= (h + top - a) / sh < Ho.
extern "C" __global__ void col2im_gather(const SCALAR* __restrict__ dcols, SCALAR* __restrict__ dx,
                                         int N, int C, int H, int W, int KH, int KW, int sh,
                                         int sw, int top, int left, int Ho, int Wo) {
    const int K = KH * KW * C;
    const long long total = (long long)N * H * W * C;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const int pixel = (int)(e / C);
        const int c = (int)(e - (long long)pixel * C);
        const int w = pixel % W;
        const int nh = pixel / W;
        const int h = nh % H, n = nh / H;
        const int hp = h + top, wp = w + left;       // the pixel in padded coordinates
        SCALAR sum = 0;
        for (int a = hp % sh; a < KH; a += sh) {
            const int i = (hp - a) / sh;
            if (i < 0) break;                        // a only grows: i only shrinks
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

// The bias gradient db[c] = Σ_r dout[r, c] over the rows of the channels-last (rows, C) matrix,
// in two launches, deterministic: stage 1, one thread per (chunk, channel) sums its chunk of
// rows (consecutive threads on consecutive channels: coalesced reads) into partial[k·C + c];
// stage 2 adds a channel's partials in chunk order. dout is C-contiguous (rows, C).
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

extern "C" __global__ void conv_bias_grad_finish(const SCALAR* __restrict__ partial,
                                                 SCALAR* __restrict__ db, int C, int chunks) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        SCALAR s = 0;
        for (int k = 0; k < chunks; ++k) s += partial[(long long)k * C + c];
        db[c] = s;
    }
}
