// The 16-bit GEMM family: a GEMM input rounded from float32 to bfloat16 in one launch, for
// cuBLAS's mixed-precision GEMM (16-bit inputs, float32 accumulation and output), which
// minicnn/kernels/gemm16.py calls. fp16 needs no kernel here: CuPy's astype(float16) is one
// launch and rounds the same way (nearest, ties to even).
//
// bfloat16 is the top half of a float32: sign, the 8 exponent bits, 7 of the 23 mantissa
// bits. Rounding to nearest, ties to even, on the bit pattern u (functional/precision.py,
// round_mantissa, with d = 16 dropped bits):
//
//     bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
//
// A carry out of the mantissa increments the exponent: rounding up into the next binade,
// and from the largest finite values to infinity, as the conversion does. A NaN is passed as
// its top half with the quiet bit set, so it stays a NaN (its low bits alone could be all
// that made it one, and rounding could carry it into an infinity).
//
// Threads: one per element, in a grid-stride loop; any grid computes the same thing.
// Twin: minicnn/kernels/gemm16.py. Tests: tests/test_kernels_gemm16.py.

extern "C" __global__ void gemm16_float_to_bf16(const float* __restrict__ x,
                                                unsigned short* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const unsigned int u = __float_as_uint(x[i]);
        const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
        y[i] = (unsigned short)(nan ? ((u >> 16) | 0x0040u)
                                    : ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16));
    }
}
