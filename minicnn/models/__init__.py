"""The models: the lectures' nets and the architecture timeline, one file per family, one registry.

Every builder returns a ``Sequential`` whose ``config`` attribute records how it was built,
``{"builder": name, "kwargs": {...}}``, so a checkpoint can rebuild the same model
(``build(**model.config)``) before loading its weights. ``model.summary()`` prints the
Keras-style table (``minicnn.layers.summary``) for the input the model was built for
(``model.input_shape``)::

    model = mc.models.vgg(widths=(32, 64, 128), depth=2, batchnorm=True)
    model.summary()                              # = mc.models.summary(model, (3, 32, 32))

The builders:

- ``simple_cnn``: the 2-conv sigmoid net of the first Fashion-MNIST / CIFAR-10 lectures.
- ``vgg``: the VGG-style ladder. Stages of (3x3 conv 'same', stride 1) blocks with 2x2 max
  pooling after each stage, then dense 512, dense 10. Every rung of the lectures is one call:
  depth, widths, activation (sigmoid / ReLU / SiLU), BatchNorm on/off (or InstanceNorm),
  init (Glorot / He), residual connections (a projection shortcut per stage), dropout.
- ``vgg16``: VGG16 for ImageNet (224x224, 4096-4096-1000 head) or its CIFAR-10 variant
  (``cifar=True``: 32x32 input and a 512 -> 256 -> 256 -> 10 head).
- ``lenet5``: LeNet-5 (LeCun et al., 1998): 6 and 16 5x5 filters, 120-84-10.
- ``resnet``: a ResNet of basic blocks (two 3x3 convs), with identity shortcuts inside a
  stage and 1x1 projection shortcuts where the shape changes (ResNet-20 by default).

Files: ``registry`` (MODELS, ``build``, the shared pieces), ``lectures`` (simple_cnn, vgg,
vgg16), and the architecture timeline (``TIMELINE``), one file per family: ``lenet``,
``alexnet``, ``nin``, ``inception``, ``resnet``, ``unet``, ``squeezenet``, ``densenet``,
``mobilenet`` (v1, v2), ``efficientnet``, ``convnext``. A new family is a new file whose
builders use ``@register("name")``, imported below.
"""

from ..layers.summary import summary  # public here too: mc.models.summary(model, shape)
from .airbench import airbench94
from .alexnet import alexnet
from .convnext import convnext, convnext_block
from .densenet import dense_layer, densenet, transition
from .efficientnet import efficientnet, mbconv
from .inception import inception, inception_block
from .lectures import simple_cnn, vgg, vgg16
from .lenet import lenet5
from .mobilenet import depthwise_separable, inverted_residual, mobilenet_v1, mobilenet_v2
from .nin import mlpconv, nin
from .registry import MODELS, activation, build, fit_whitening, register
from .resnet import basic_block, resnet
from .squeezenet import fire, squeezenet
from .unet import double_conv, unet

# The lecture's architecture timeline, oldest first (each a CIFAR-sized version; the builder's
# docstring names the paper and what this version keeps and changes).
TIMELINE = ("lenet5", "alexnet", "nin", "vgg16", "inception", "resnet", "unet", "squeezenet",
            "densenet", "mobilenet_v1", "mobilenet_v2", "efficientnet", "convnext")

__all__ = ["simple_cnn", "vgg", "vgg16", "lenet5", "resnet", "basic_block", "build", "MODELS",
           "summary", "activation", "fit_whitening", "register", "TIMELINE",
           "alexnet", "nin", "mlpconv", "squeezenet", "fire", "inception", "inception_block",
           "densenet", "dense_layer", "transition", "unet", "double_conv", "mobilenet_v1",
           "mobilenet_v2", "depthwise_separable", "inverted_residual", "efficientnet", "mbconv",
           "convnext", "convnext_block", "airbench94"]
