"""tritonkron: Kronecker-factored optimizers for PyTorch under three Bregman divergences.

Public API: :class:`Kron`, :func:`kronecker_projection`, :func:`bregman_divergence`,
:func:`inverse_root`, and the option enums :class:`Divergence` and :class:`TailRule`.
"""

from tritonkron.config import Divergence, TailRule
from tritonkron.divergences import bregman_divergence, kronecker_projection
from tritonkron.optim import Kron
from tritonkron.reference.inverse_root import inverse_root

__all__ = ["Divergence", "Kron", "TailRule", "bregman_divergence", "inverse_root", "kronecker_projection"]
__version__ = "0.1.0"
