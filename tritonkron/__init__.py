"""tritonkron: Kronecker-factored optimizers for PyTorch under three Bregman divergences.

Public API: :class:`Kron`, :func:`kronecker_projection`, :func:`bregman_divergence`,
:func:`inverse_root`, and the option enums :class:`Divergence` and :class:`TailRule`.
"""

from tritonkron.math.projection import bregman_divergence, kronecker_projection
from tritonkron.ops.inverse_root.methods import inverse_root
from tritonkron.optim import Kron
from tritonkron.options import Divergence, TailRule

__all__ = ["Divergence", "Kron", "TailRule", "bregman_divergence", "inverse_root", "kronecker_projection"]
__version__ = "0.1.0"
