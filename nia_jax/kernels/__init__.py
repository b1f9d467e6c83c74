"""Pure JAX kernels: similarity and top-K, local weights, ridge coding, fusion."""
