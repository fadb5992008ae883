// The optimizer family: one launch updates every parameter of a flat buffer.
//
// minicnn's optimizers (minicnn/optim/) keep, on CuPy, every parameter of one (device, dtype)
// in one flat buffer theta (the Parameter.data arrays are views of it), the gradients in one
// flat buffer grad and the optimizer state (momentum b, Adam's m and v, EMA's shadow) in flat
// buffers of the same layout. One step is then one launch over n elements instead of ~13
// element-wise operations per parameter.
//
// What changes from step to step is read from a small device array `hyper` (double):
//   hyper[0]                     the learning rate γ (written by the launcher when opt.lr
//                                changes: a fill, no copy from the host, no sync);
//   hyper[slot], hyper[slot + 1] a step counter in two cells: a launch reads t from cell
//                                `parity` and writes t + 1 into the other one, which no
//                                thread of this launch reads (so no thread races with the
//                                write, whatever the order of the blocks); the next launch
//                                reads that cell. The host only flips `parity`.
// Per-element arithmetic is in SCALAR (float or double), in the order of the NumPy code of
// minicnn/optim/ (sgd.py, adam.py, ema.py); the per-launch scalars (bias corrections, step
// sizes) in double, rounded to SCALAR once, as NumPy rounds a Python float.
//
// Threads: one per element i of theta[0:n], in a grid-stride loop
//     for (i = blockIdx.x·blockDim.x + threadIdx.x; i < n; i += blockDim.x·gridDim.x)
// so any grid computes the same thing; the elements are independent.
//
// Twins: minicnn/kernels/optimizer.py. Tests: tests/test_kernels_optimizer.py.

// ---- helpers -------------------------------------------------------------------------------

// β^t for an integer t >= 1 stored as a double; 0 when β = 0 (log(0) = -inf, exp(-inf) = 0).
__device__ __forceinline__ static double optim_power(double beta, double t) {
    return exp(t * log(beta));
}

// The step counter k = hyper[slot + parity] of this launch; thread 0 of block 0 writes k + 1
// into the other cell, which no thread of this launch reads, for the next launch.
__device__ __forceinline__ static double optim_count(double* hyper, int slot, int parity) {
    const double k = hyper[slot + parity];
    if (blockIdx.x == 0 && threadIdx.x == 0) hyper[slot + 1 - parity] = k + 1.0;
    return k;
}

// ---- the optimizers ------------------------------------------------------------------------

// SGD, PyTorch's rule (sgd.py), on theta[0:n]:
//   g = ∇θ + λθ (coupled) or θ = θ - γλθ first (decoupled);
//   b = g (first step) or b = μ b + (1 - τ) g;  g = g + μ b (Nesterov) or g = b;  θ = θ - γ g
// with γ = hyper[0] · lr_scale. Without momentum (μ = 0) b is neither read nor written.
//   theta, grad, b: (n,). Threads: one per element, grid-stride.
extern "C" __global__ void optim_sgd_step(long long n, SCALAR* theta, const SCALAR* grad,
                                          SCALAR* b, const double* hyper, double lr_scale,
                                          double momentum, double dampening,
                                          double weight_decay, int nesterov, int decoupled,
                                          int first) {
    const double lr = hyper[0] * lr_scale;
    const SCALAR gamma = (SCALAR)lr;
    const SCALAR decay = (SCALAR)(lr * weight_decay);       // γλ, decoupled
    const SCALAR lambda = (SCALAR)weight_decay;
    const SCALAR mu = (SCALAR)momentum;
    const SCALAR keep = (SCALAR)(1.0 - dampening);           // 1 - τ
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        SCALAR th = theta[i];
        SCALAR g = grad[i];
        if (weight_decay != 0.0) {
            if (decoupled) th = th - decay * th;
            else g = g + lambda * th;
        }
        if (momentum != 0.0) {
            const SCALAR bi = first ? g : mu * b[i] + keep * g;
            b[i] = bi;
            g = nesterov ? g + mu * bi : bi;
        }
        theta[i] = th - gamma * g;
    }
}

// Adam / AdamW (adam.py), on theta[0:n], at step t = hyper[slot + parity] + 1:
//   g = ∇θ + λθ (Adam) or θ = θ (1 - γλ) first (AdamW, decoupled != 0);
//   m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²   (m = v = 0 before the first step);
//   θ = θ - (γ / (1 - β1ᵗ)) · m / (sqrt(v) / sqrt(1 - β2ᵗ) + ε)
//   theta, grad, m, v: (n,); hyper[slot + 1 - parity] = t for the next step.
//   Threads: one per element, grid-stride.
extern "C" __global__ void optim_adam_step(long long n, SCALAR* theta, const SCALAR* grad,
                                           SCALAR* m, SCALAR* v, double* hyper, int slot,
                                           int parity, double lr_scale, double beta1,
                                           double beta2, double eps, double weight_decay,
                                           int decoupled) {
    const double t = optim_count(hyper, slot, parity) + 1.0;
    const double lr = hyper[0] * lr_scale;
    const SCALAR step_size = (SCALAR)(lr / (1.0 - optim_power(beta1, t)));   // γ / (1 - β1ᵗ)
    const SCALAR root_c2 = (SCALAR)sqrt(1.0 - optim_power(beta2, t));      // sqrt(1 - β2ᵗ)
    const SCALAR b1 = (SCALAR)beta1, b2 = (SCALAR)beta2;
    const SCALAR a1 = (SCALAR)(1.0 - beta1), a2 = (SCALAR)(1.0 - beta2);
    const SCALAR epsilon = (SCALAR)eps;
    const SCALAR lambda = (SCALAR)weight_decay;
    const SCALAR shrink = (SCALAR)(1.0 - lr * weight_decay);               // 1 - γλ
    const bool fresh = t == 1.0;                  // m, v start at 0: their memory is not read
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        SCALAR th = theta[i];
        SCALAR g = grad[i];
        if (weight_decay != 0.0) {
            if (decoupled) th = th * shrink;
            else g = g + lambda * th;
        }
        const SCALAR mi = (fresh ? (SCALAR)0 : b1 * m[i]) + a1 * g;
        const SCALAR vi = (fresh ? (SCALAR)0 : b2 * v[i]) + a2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const SCALAR denom = sqrt(vi) / root_c2 + epsilon;
        theta[i] = th - mi / denom * step_size;
    }
}

// EMA of the weights (ema.py), on shadow[0:n] after update k = hyper[slot + parity]:
//   d = min(decay, (1 + k) / (10 + k)) with warmup, else decay;
//   θ_ema = θ_ema - (1 - d) (θ_ema - θ)
//   shadow, theta: (n,); hyper[slot + 1 - parity] = k + 1 for the next update.
//   Threads: one per element, grid-stride.
extern "C" __global__ void optim_ema_update(long long n, SCALAR* shadow, const SCALAR* theta,
                                            double* hyper, int slot, int parity, double decay,
                                            int warmup) {
    const double k = optim_count(hyper, slot, parity);
    const double d = warmup ? fmin(decay, (1.0 + k) / (10.0 + k)) : decay;
    const SCALAR rate = (SCALAR)(1.0 - d);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const SCALAR s = shadow[i];
        shadow[i] = s - rate * (s - theta[i]);
    }
}
