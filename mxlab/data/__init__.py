"""Datasets, registered by name in :data:`mxlab.registry.datasets`; batches are made on the training device."""
from mxlab.data import fashion_mnist, synthetic, text  # noqa: F401  (registers the datasets)
from mxlab.data.core import ArrayLoader, DataBundle, load_data  # noqa: F401
