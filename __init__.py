"""gcomp: semantic image completion with GANs (Yeh et al., 2016).

Importing gcomp never imports torch: the runtime (ONNX Runtime backends, the batch pipeline) runs without it.
"""
__version__ = "0.1.0"
