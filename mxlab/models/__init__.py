"""The model zoo: one module per family, each registering its builders in :data:`mxlab.registry.models`."""
import importlib

FAMILIES = ("linear", "lenet", "mlp", "alexnet", "vgg", "nin", "googlenet", "batchnorm", "resnet", "densenet", "rnn")

for _family in FAMILIES:
    importlib.import_module(f"mxlab.models.{_family}")
