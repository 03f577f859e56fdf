"""fastpix.kernels: fused Triton kernels, one file per fused operation (kernel, launcher, autograd.Function)."""
