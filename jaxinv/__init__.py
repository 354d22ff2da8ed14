"""jaxinv: a JAX-native, differentiable framework for the inverse design of inorganic crystals."""
from jaxinv.crystal import Crystal

__version__ = "0.1.0"
__all__ = ["Crystal", "__version__"]
