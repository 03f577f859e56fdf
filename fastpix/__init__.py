"""fastpix: pix2pix (Isola et al. 2017), the same mathematics as the reference implementation, made fast.

Heavy pieces (the Triton kernels, the decoder, torch itself) are imported lazily so that `import fastpix` stays
cheap: `fastpix.Predictor` loads fastpix.infer.predictor on first access (and `from fastpix import *` then).
"""

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "fastpix.infer.predictor",
    "ImageRequest": "fastpix.infer.requests",
    "ImageResult": "fastpix.infer.requests",
}

__all__ = ["Predictor", "ImageRequest", "ImageResult", "__version__"]  # `import *` loads them through __getattr__


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastpix' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
