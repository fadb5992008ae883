// Element-wise kernels: each activation's forward and backward, dropout, and softmax
// cross-entropy, each in one launch (minicnn/kernels/elementwise.py: launchers and twins).
//
// The activations work on the flat storage of their arrays: x, dout and the outputs share one
// memory layout (channels-last or not: the launcher passes each array's 1-D view in storage
// order), so element i of every pointer is the same logical element and the layout survives.
// Every loop is grid-stride: any grid computes the same thing.

// The grid-stride loop over i in [0, n).
#define EW_FOR(i, n)                                                                      \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);          \
         i += (long long)blockDim.x * gridDim.x)

// σ(v) = exp(min(v, 0)) / (1 + exp(-|v|)): no exponent is positive (no overflow), and the
// left tail keeps its relative accuracy. The NumPy path (functional/activation.py: sigmoid)
// computes 1 / (1 + exp(-v)), whose overflow to inf gives 0: one exp where passes cost.
__device__ __forceinline__ static SCALAR ew_sigmoid(SCALAR v) {
    const SCALAR one = 1;
    return exp(v < 0 ? v : (SCALAR)0) / (one + exp(-fabs(v)));
}

// ---- ReLU: y = max(x, 0) is one ufunc; its backward dx = dout * [y > 0] ------------------
extern "C" __global__ void ew_relu_backward(const SCALAR* __restrict__ y,
                                            const SCALAR* __restrict__ dout,
                                            SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) dx[i] = dout[i] * (y[i] > 0 ? (SCALAR)1 : (SCALAR)0);
}

// ---- LeakyReLU: y = x (x > 0), α x (otherwise); dx = dout * (1 or α) ----------------------
extern "C" __global__ void ew_leaky_relu_forward(const SCALAR* __restrict__ x, SCALAR alpha,
                                                 SCALAR* __restrict__ y, long long n) {
    EW_FOR(i, n) y[i] = x[i] > 0 ? x[i] : alpha * x[i];
}

extern "C" __global__ void ew_leaky_relu_backward(const SCALAR* __restrict__ x,
                                                  const SCALAR* __restrict__ dout, SCALAR alpha,
                                                  SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) dx[i] = dout[i] * (x[i] > 0 ? (SCALAR)1 : alpha);
}

// ---- Sigmoid: y = σ(x); dx = dout * y (1 - y) ---------------------------------------------
extern "C" __global__ void ew_sigmoid_forward(const SCALAR* __restrict__ x,
                                              SCALAR* __restrict__ y, long long n) {
    EW_FOR(i, n) y[i] = ew_sigmoid(x[i]);
}

extern "C" __global__ void ew_sigmoid_backward(const SCALAR* __restrict__ y,
                                               const SCALAR* __restrict__ dout,
                                               SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) dx[i] = dout[i] * (y[i] * ((SCALAR)1 - y[i]));
}

// ---- Tanh: y = tanh(x) is one ufunc; dx = dout * (1 - y²) ----------------------------------
extern "C" __global__ void ew_tanh_backward(const SCALAR* __restrict__ y,
                                            const SCALAR* __restrict__ dout,
                                            SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) dx[i] = dout[i] * ((SCALAR)1 - y[i] * y[i]);
}

// ---- SiLU: y = x σ(x); dx = dout * σ (1 + x (1 - σ)), σ recomputed from x ------------------
extern "C" __global__ void ew_silu_forward(const SCALAR* __restrict__ x,
                                           SCALAR* __restrict__ y, long long n) {
    EW_FOR(i, n) y[i] = x[i] * ew_sigmoid(x[i]);
}

extern "C" __global__ void ew_silu_backward(const SCALAR* __restrict__ x,
                                            const SCALAR* __restrict__ dout,
                                            SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) {
        const SCALAR s = ew_sigmoid(x[i]);
        dx[i] = dout[i] * (s * ((SCALAR)1 + x[i] * ((SCALAR)1 - s)));
    }
}

// ---- GELU, exact: y = x Φ(x), Φ(x) = ½ erfc(-x/√2); dx = dout * (Φ + x φ(x)) ---------------
__device__ __forceinline__ static SCALAR ew_normal_cdf(SCALAR v) {
    return (SCALAR)0.5 * erfc(v * (SCALAR)-0.70710678118654752440);   // -1/√2
}

extern "C" __global__ void ew_gelu_forward(const SCALAR* __restrict__ x,
                                           SCALAR* __restrict__ y, long long n) {
    EW_FOR(i, n) y[i] = x[i] * ew_normal_cdf(x[i]);
}

extern "C" __global__ void ew_gelu_backward(const SCALAR* __restrict__ x,
                                            const SCALAR* __restrict__ dout,
                                            SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) {
        // φ(±40) = 0 in float64; clipping keeps x² finite for huge |x|.
        const SCALAR xc = fmin(fmax(x[i], (SCALAR)-40), (SCALAR)40);
        const SCALAR phi = (SCALAR)0.39894228040143267794 * exp((SCALAR)-0.5 * (xc * xc));
        dx[i] = dout[i] * (ew_normal_cdf(x[i]) + x[i] * phi);                 // 1/√(2π) above
    }
}

// ---- GELU, tanh form: s = σ(2u), u = √(2/π) (x + 0.044715 x³); y = x s ---------------------
//      dx = dout * (s + 2 x s (1 - s) du/dx),  du/dx = √(2/π) (1 + 3 · 0.044715 x²)
__device__ __forceinline__ static SCALAR ew_gelu_tanh_s(SCALAR v) {
    const SCALAR u = (SCALAR)0.79788456080286535588 * (v + (SCALAR)0.044715 * (v * v * v));
    return ew_sigmoid((SCALAR)2 * u);
}

extern "C" __global__ void ew_gelu_tanh_forward(const SCALAR* __restrict__ x,
                                                SCALAR* __restrict__ y, long long n) {
    EW_FOR(i, n) y[i] = x[i] * ew_gelu_tanh_s(x[i]);
}

extern "C" __global__ void ew_gelu_tanh_backward(const SCALAR* __restrict__ x,
                                                 const SCALAR* __restrict__ dout,
                                                 SCALAR* __restrict__ dx, long long n) {
    EW_FOR(i, n) {
        const SCALAR v = x[i], s = ew_gelu_tanh_s(v);
        const SCALAR du_dx = (SCALAR)0.79788456080286535588 *
                             ((SCALAR)1 + (SCALAR)(3 * 0.044715) * (v * v));
        dx[i] = dout[i] * (s + (SCALAR)2 * v * s * ((SCALAR)1 - s) * du_dx);
    }
}

// ---- Dropout: mask = [bits(i) >= threshold] / (1 - p), y = x * mask -----------------------
// bits(i) = mix(mix(i ^ k0) ^ k1), mix = lowbias32: functional/random_bits.py's draw, element
// by element (unsigned 32-bit arithmetic wraps mod 2**32 as NumPy's uint32 does).
__device__ __forceinline__ static unsigned int ew_mix(unsigned int h) {
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

extern "C" __global__ void ew_dropout_forward(const SCALAR* __restrict__ x, unsigned int k0,
                                              unsigned int k1, unsigned int threshold,
                                              SCALAR scale, SCALAR* __restrict__ y,
                                              SCALAR* __restrict__ mask, long long n) {
    EW_FOR(i, n) {
        const unsigned int bits = ew_mix(ew_mix((unsigned int)i ^ k0) ^ k1);
        const SCALAR m = bits >= threshold ? scale : (SCALAR)0;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

// ---- Softmax cross-entropy over logits z (N, C) and labels y (N,) --------------------------
// With p = softmax(z) row by row, ε the label smoothing and t = (1 - ε) onehot(y) + ε / C:
//     loss_n = -[(1 - ε) log p_{n, y_n} + (ε / C) Σ_c log p_nc],   L = (1/N) Σ_n loss_n
// A label outside [0, C) is read as the nearest class (no out-of-range access); ce_finalize
// makes the batch's loss NaN and records the label.

// One thread per row n (looping over the C classes): p[n, :] and loss_rows[n].
// keep = 1 - ε, spread = ε / C.
extern "C" __global__ void ce_rows(const SCALAR* __restrict__ z, const long long* __restrict__ y,
                                   SCALAR keep, SCALAR spread, SCALAR* __restrict__ p,
                                   SCALAR* __restrict__ loss_rows, long long N, long long C) {
    EW_FOR(n, N) {
        const SCALAR* zn = z + n * C;
        SCALAR* pn = p + n * C;
        SCALAR m = zn[0];                           // log-sum-exp: subtract the row's max
        for (long long c = 1; c < C; ++c) m = zn[c] > m ? zn[c] : m;
        SCALAR sum = 0;
        for (long long c = 0; c < C; ++c) sum += exp(zn[c] - m);
        const SCALAR log_sum = log(sum);
        const long long label = min(max(y[n], 0LL), C - 1);
        SCALAR sum_log_p = 0;
        for (long long c = 0; c < C; ++c) {
            const SCALAR log_p = (zn[c] - m) - log_sum;
            pn[c] = exp(log_p);
            sum_log_p += log_p;
        }
        loss_rows[n] = -(keep * ((zn[label] - m) - log_sum) + spread * sum_log_p);
    }
}

// One thread: loss[0] = the mean of loss_rows, or NaN when a label is outside [0, C); the
// first such label goes to bad = [seen, label] unless an earlier batch's is there already.
extern "C" __global__ void ce_finalize(const SCALAR* __restrict__ loss_rows,
                                       const long long* __restrict__ y,
                                       long long* __restrict__ bad, SCALAR* __restrict__ loss,
                                       long long N, long long C) {
    EW_FOR(t, 1) {
        SCALAR total = 0;
        long long found = 0, first = 0;
        for (long long n = 0; n < N; ++n) {
            total += loss_rows[n];
            if (!found && (y[n] < 0 || y[n] >= C)) {
                found = 1;
                first = y[n];
            }
        }
        // IEEE: the square root of a negative number is NaN (a bad label never gives a number).
        loss[0] = found ? sqrt((SCALAR)-1) : total / (SCALAR)N;
        if (found && !bad[0]) {
            bad[0] = 1;
            bad[1] = first;
        }
    }
}

// dz[n, c] = (p[n, c] - t[n, c]) / N, t = hit at the label, miss elsewhere (hit = 1 - ε + ε/C,
// miss = ε/C): element-wise over the N C entries.
extern "C" __global__ void ce_backward(const SCALAR* __restrict__ p,
                                       const long long* __restrict__ y, SCALAR hit, SCALAR miss,
                                       SCALAR inv_n, SCALAR* __restrict__ dz, long long N,
                                       long long C) {
    EW_FOR(i, N * C) {
        const long long n = i / C, c = i % C;
        const long long label = min(max(y[n], 0LL), C - 1);
        dz[i] = (p[i] - (c == label ? hit : miss)) * inv_n;
    }
}
