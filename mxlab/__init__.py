"""mxlab: experiment folders for Apache MXNet (Gluon), one runner, MLflow tracking and Optuna studies."""

__version__ = "0.1.0"
