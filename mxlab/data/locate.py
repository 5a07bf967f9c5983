"""``python -m mxlab.data.locate``: exit 0 when the local data sources are present, 1 otherwise (for ``make``)."""
import sys

from mxlab.data import fashion_mnist


def main() -> int:
    missing = []
    for name in fashion_mnist.FILES:
        try:
            fashion_mnist.locate(name, download=False)
        except fashion_mnist.DataError:
            missing.append(f"{name}.gz")
    if missing:
        print(f"not found locally: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
