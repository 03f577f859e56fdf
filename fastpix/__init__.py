"""fastpix: pix2pix (Isola et al. 2017), the same mathematics as the reference implementation, made fast.

Heavy pieces (the Triton kernels, the decoder) are imported lazily so that `import fastpix` stays cheap.
"""
__version__ = "0.1.0"
