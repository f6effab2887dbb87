"""gcomp: semantic image completion with GANs (Yeh et al., 2016).

The public API (importing gcomp never imports torch; these load on first use):

    import gcomp
    with gcomp.open_model() as model:                 # the bundled model; or a checkpoint / export folder
        out = model.complete(rgb, "center")           # HxWx3 uint8 RGB -> HxWx3 uint8 RGB

See gcomp.engine.api for Model (complete, complete_many, complete_files) and the mask convention.
"""
__version__ = "0.3.0"

_API = {
    "open_model": "gcomp.engine.api", "Model": "gcomp.engine.api", "default_model": "gcomp.engine.api",
    "CompleteOptions": "gcomp.engine.options", "SearchParams": "gcomp.engine.search", "Summary": "gcomp.engine.jobs",
    "BackendError": "gcomp.engine.backends.base", "MaskError": "gcomp.engine.masks",
    "ImageError": "gcomp.engine.images", "OutputError": "gcomp.engine.images",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gcomp' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
