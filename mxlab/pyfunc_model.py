"""The MLflow pyfunc model of a trained network, logged as code (``python_model=<this file>``).

MLflow pickles a ``PythonModel`` object unless it is given as code, and nothing holding mxnet's ctypes
handles pickles; so this file is copied into the model and defines the model when MLflow loads it.
A hybridized network with one input is exported as ``symbol.json`` + ``net.params`` and reloaded as a
``SymbolBlock``, with no mxlab needed; any other network is rebuilt from its spec by mxlab's registry.
"""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


def _import_mxnet():
    """MXNet through mxlab (its compatibility layer first, then the CUDA libraries of a GPU build): a fresh
    process on Python 3.12+ cannot ``import mxnet`` without it. Plain ``import mxnet`` where mxlab is not installed
    (fine on Python 3.10/3.11 with numpy < 1.24)."""
    try:
        from mxlab.devices import import_mxnet
    except ImportError:
        import mxnet

        return mxnet
    return import_mxnet()


class GluonNetModel(PythonModel):
    def load_context(self, context):
        mx = _import_mxnet()

        artifacts = context.artifacts
        if "symbol" in artifacts:
            self.net = mx.gluon.SymbolBlock.imports(artifacts["symbol"], ["data"], artifacts["params"])
        else:
            from pathlib import Path

            import yaml

            import mxlab.models  # noqa: F401  (registers the zoo)
            from mxlab.registry import models
            from mxlab.spec import from_dict
            from mxlab.train import build_net
            from mxlab.workspace import import_experiment_model

            with open(artifacts["spec"], encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            if raw["model"]["name"] not in models and "experiment_model" in artifacts:
                # A model registered by its experiment folder's model.py, shipped with this model.
                import_experiment_model(Path(artifacts["experiment_model"]).parent)
            spec = from_dict("model", raw)
            self.net = build_net(spec)
            self.net.load_parameters(artifacts["params"], ctx=mx.cpu())

    def predict(self, context, model_input, params=None):
        mx = _import_mxnet()

        X = np.asarray(model_input, dtype=np.float32)
        y_hat = self.net(mx.nd.array(X))
        if isinstance(y_hat, (tuple, list)):   # a recurrent network also returns its state
            y_hat = y_hat[0]
        return y_hat.asnumpy()


mlflow.models.set_model(GluonNetModel())
