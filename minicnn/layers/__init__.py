"""The layers: each one a forward pass and a hand-written backward pass.

One file per family: ``conv`` (Conv2d), ``pool`` (MaxPool2d, AvgPool2d, GlobalAvgPool2d),
``linear`` (Linear), ``activation`` (ReLU, LeakyReLU, Sigmoid, Tanh, SiLU, GELU),
``norm`` (BatchNorm1d/2d, LayerNorm, GroupNorm, InstanceNorm2d), ``dropout`` (Dropout),
``reshape`` (Flatten), ``container`` (Sequential, Residual); ``base`` holds Layer and Parameter.
"""

from .activation import *
from .base import Layer, Parameter
from .container import *
from .conv import *
from .dropout import *
from .linear import *
from .norm import *
from .pool import *
from .reshape import *
