"""The layers: each one a forward pass and a hand-written backward pass.

One file per family: ``conv`` (Conv2d), ``conv_transpose`` (ConvTranspose2d), ``pool``
(MaxPool2d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d), ``upsample`` (Upsample),
``attention`` (SqueezeExcite), ``linear`` (Linear), ``activation`` (ReLU, LeakyReLU,
Sigmoid, Tanh, SiLU, GELU),
``batchnorm`` (BatchNorm1d/2d), ``sync_batchnorm`` (SyncBatchNorm2d, for
``minicnn.distributed``), ``norm`` (LayerNorm, GroupNorm, InstanceNorm2d),
``local_response_norm`` (LocalResponseNorm, AlexNet's LRN),
``whitening`` (PatchWhitening), ``dropout`` (Dropout), ``reshape`` (Flatten),
``container`` (Identity, Sequential, Residual, Concat);
``base`` holds Layer and Parameter and the layer contract; ``summary`` the Keras-style table
of ``model.summary()``. docs/architecture.md shows where a new layer goes.
"""

from .activation import *
from .attention import *
from .base import Layer, Parameter
from .batchnorm import *
from .container import *
from .conv import *
from .conv_transpose import *
from .dropout import *
from .linear import *
from .local_response_norm import *
from .norm import *
from .pool import *
from .reshape import *
from .sync_batchnorm import SyncBatchNorm2d
from .upsample import *
from .whitening import *
