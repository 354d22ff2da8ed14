"""jaxinv: a JAX-native, differentiable framework for the inverse design of inorganic crystals."""
from jaxinv.crystal import Crystal
from jaxinv.xla_cache import use_compilation_cache

use_compilation_cache()  # compiled programs persist across processes (JAXINV_XLA_CACHE=off: they don't)

__version__ = "0.1.0"
__all__ = ["Crystal", "__version__"]
