"""Stateless array math that the layers share, on NumPy and CuPy alike.

One module per concern; a layer imports the functions it needs from the module itself::

    im2col.py         im2col / col2im / col2im_matmul, flipped_patches, conv_input_grad,
                      window views, output_size
    conv.py           Conv2d's pieces: which algorithm (conv2d_algorithm), W as a matrix,
                      the backward's one patch matrix (of x or of dout), dW and dx from it
    winograd.py       Winograd's F(2×2, 3×3) and F(4×4, 3×3): forward and backward of a 3×3
                      stride-1 convolution with fewer multiplies; the measured "auto" rule
    grouped_conv.py   grouped and depthwise convolution (Conv2d's groups), as batched products
    scratch.py        the scratch arena: one buffer per name, shared by all layers, for
                      temporaries that die with their pass (patch matrices, padded copies)
    pooling.py        max pooling's window max, first-max mask and dx
    resample.py       upsampling and adaptive average pooling as two small matrices
    normalization.py  normalize / normalize_backward: every normalization layer
    activation.py     the activations and their derivatives: relu / relu_backward,
                      leaky_relu, sigmoid, tanh, silu, gelu (the activation layers)
    dropout.py        inverted dropout's mask, forward and backward (the Dropout layer)
    random_bits.py    counter-based random bits (Dropout's device masks)
    softmax.py        softmax / log-softmax (the cross-entropy loss)
    special.py        special functions NumPy lacks: erf / erfc (Cody's rational
                      approximations) and the normal CDF Φ (the exact GELU)
    precision.py      the training precision (fp32, tf32, bf16, fp16): GEMM inputs rounded
                      to the format, everything else float32 (docs/precision.md)
    reference.py      the simple twins (loops, textbook formulas) the tests compare with
"""
