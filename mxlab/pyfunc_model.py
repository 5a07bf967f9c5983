"""The MLflow pyfunc model of a trained network, logged as code (``python_model=<this file>``).

MLflow pickles a ``PythonModel`` object unless it is given as code, and nothing holding mxnet's ctypes
handles pickles; so this file is copied into the model and defines the model when MLflow loads it.
A hybridized network with one input is exported as ``symbol.json`` + ``net.params`` and reloaded as a
``SymbolBlock``, with no mxlab needed; any other network is rebuilt from its spec by mxlab's registry.

Inputs and outputs (``model.json`` says which task):

- image classifiers take N x C x H x W, N x H x W or N x H*W (square) images, integers 0-255 or floats 0-1
  (a float above 1 means 0-255 too), of any size: they are resized to what the network was trained on.
  They return a frame: ``class_id``, ``label`` and one ``prob_<label>`` column per class.
- language models take prefixes (a ``prefix`` column, a list of strings or one string) and return a frame of
  ``prefix`` and ``text`` (the prefix continued greedily by ``length`` characters, a parameter).
- regression models take N x features and return ``prediction`` (one column per output).
"""
import json
import warnings

import mlflow
import numpy as np
import pandas as pd
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


def _array(model_input) -> np.ndarray:
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    x = np.asarray(model_input)
    if x.dtype == object:   # JSON lists arrive as objects under a permissive signature
        x = np.asarray(x.tolist())
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"input of dtype {x.dtype}: allowed: numbers (integers 0-255 or floats 0-1)")
    return x


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class GluonNetModel(PythonModel):
    def load_context(self, context):
        mx = _import_mxnet()

        artifacts = context.artifacts
        self.card = {}
        if "card" in artifacts:
            with open(artifacts["card"], encoding="utf-8") as f:
                self.card = json.load(f)
        if "symbol" in artifacts:
            with warnings.catch_warnings():   # MXNet cannot tell the input's dtype before the first call
                warnings.simplefilter("ignore", UserWarning)
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
        task = self.card.get("task")
        if task == "language_model":
            return self._generate(model_input, (params or {}).get("length"))
        if task == "classification" and "image" in self.card:
            return self._classify(model_input)
        return self._regress(model_input)

    def _forward(self, X: np.ndarray) -> np.ndarray:
        mx = _import_mxnet()
        y_hat = self.net(mx.nd.array(X, dtype=np.float32))
        if isinstance(y_hat, (tuple, list)):   # a recurrent network also returns its state
            y_hat = y_hat[0]
        return y_hat.asnumpy()

    def _images(self, model_input) -> np.ndarray:
        """Any accepted layout and range -> N x C x H x W floats, as the training transform made them."""
        mx = _import_mxnet()
        x = _array(model_input)
        scale_255 = np.issubdtype(x.dtype, np.integer) or (x.size and float(x.max()) > 1.0)
        x = x.astype(np.float32) / (255.0 if scale_255 else 1.0)
        channels, height, width = self.card["input_shape"]
        if x.ndim == 1:
            x = x[None]
        if x.ndim == 2:
            side = int(round(np.sqrt(x.shape[1] / channels)))
            if channels * side * side != x.shape[1]:
                raise ValueError(f"input of shape {x.shape}: {x.shape[1]} values per image is no square image; "
                                 f"allowed: N x {channels} x H x W, N x H x W or N x H*W")
            x = x.reshape(len(x), channels, side, side)
        elif x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"input of shape {x.shape}: allowed: N x {channels} x H x W, N x H x W or N x H*W")
        if x.shape[2:] != (height, width):
            x = mx.nd.contrib.BilinearResize2D(mx.nd.array(x), height=height, width=width).asnumpy()
        image = self.card["image"]
        return x * image["scale"] + image["shift"]

    def _classify(self, model_input) -> pd.DataFrame:
        out = self._forward(self._images(model_input))
        probs = out if self.card.get("outputs") == "probabilities" else _softmax(out)
        labels = self.card["labels"]
        class_id = probs.argmax(axis=1)
        frame = pd.DataFrame({"class_id": class_id.astype(np.int64), "label": [labels[i] for i in class_id]})
        for i, label in enumerate(labels):
            frame[f"prob_{label}"] = probs[:, i].astype(np.float64)
        return frame

    def _regress(self, model_input) -> pd.DataFrame:
        out = self._forward(_array(model_input).astype(np.float32))
        out = out.reshape(len(out), -1).astype(np.float64)
        if out.shape[1] == 1:
            return pd.DataFrame({"prediction": out[:, 0]})
        return pd.DataFrame({f"prediction_{i}": out[:, i] for i in range(out.shape[1])})

    def _generate(self, model_input, length) -> pd.DataFrame:
        from mxlab.models.rnn import predict_rnn

        mx = _import_mxnet()
        if isinstance(model_input, pd.DataFrame):
            column = "prefix" if "prefix" in model_input else model_input.columns[0]
            prefixes = [str(p) for p in model_input[column]]
        elif isinstance(model_input, str):
            prefixes = [model_input]
        else:
            prefixes = [str(p) for p in np.asarray(model_input).ravel()]
        vocab = self.card["vocab"]
        char_to_idx = {c: i for i, c in enumerate(vocab)}
        length = int(length if length is not None else self.card.get("generate_length", 50))
        texts = [predict_rnn(self.net, p, length, vocab, char_to_idx, mx.cpu()) for p in prefixes]
        return pd.DataFrame({"prefix": prefixes, "text": texts})


mlflow.models.set_model(GluonNetModel())
