"""ecc-yolo: edge-cloud collaborative object detection for Ultralytics YOLO."""

from ecc_yolo.version import __version__

__all__ = ["ECC", "__version__"]


def __getattr__(name: str):
    # Lazy so that `ecc-yolo help` and light imports (codec, spec) do not pay for importing torch and Ultralytics.
    if name == "ECC":
        from ecc_yolo.engine.model import ECC

        return ECC
    raise AttributeError(f"module 'ecc_yolo' has no attribute '{name}'")
