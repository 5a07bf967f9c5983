"""``python -m mxlab.data.locate``: exit 0 when the local data sources are present, 1 otherwise (for ``make``).

Checks what the Debian packages provide: Fashion-MNIST (``dataset-fashion-mnist``) and the Tang poems the RNN
experiments train on (``fortunes-zh``).
"""
import sys

from mxlab.data import fashion_mnist, text


def main() -> int:
    missing = []
    for name in fashion_mnist.FILES:
        try:
            fashion_mnist.locate(name, download=False)
        except fashion_mnist.DataError:
            missing.append(f"{name}.gz")
    if not text.tang300_path().is_file():
        missing.append(f"{text.tang300_path()} (fortunes-zh)")
    if missing:
        print(f"not found locally: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
