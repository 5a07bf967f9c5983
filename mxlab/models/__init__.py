"""The model zoo: one module per family, each registering its builders in :data:`mxlab.registry.models`."""
import importlib

from mxlab.devices import import_mxnet

# The one place that prepares the interpreter for mxnet (GPU builds' CUDA libraries, compatibility shims): run it
# before any family module does `from mxnet import ...`.
import_mxnet()

FAMILIES = ("linear", "lenet", "mlp", "alexnet", "vgg", "nin", "googlenet", "batchnorm", "resnet", "densenet", "rnn")

for _family in FAMILIES:
    importlib.import_module(f"mxlab.models.{_family}")
