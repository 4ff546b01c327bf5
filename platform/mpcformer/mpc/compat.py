"""The one place that knows how to import CrypTen 0.4.1 on a current torch.

CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which torch >= 2.9 moved to
``torch.onnx._internal.torchscript_exporter.registration``. We alias the moved module under its
old name before the first ``import crypten``. Everything in mpcformer imports crypten through
:func:`import_crypten` (or ``from mpcformer.mpc.compat import crypten``).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["import_crypten", "crypten"]

_OLD_REGISTRY = "torch.onnx._internal.registration"
_NEW_REGISTRY = "torch.onnx._internal.torchscript_exporter.registration"


def _alias_onnx_registry() -> None:
    if _OLD_REGISTRY in sys.modules:
        return
    try:
        importlib.import_module(_OLD_REGISTRY)
        return  # older torch: the module is where CrypTen expects it
    except ImportError:
        pass
    sys.modules[_OLD_REGISTRY] = importlib.import_module(_NEW_REGISTRY)


def import_crypten() -> ModuleType:
    """Import and return ``crypten``, patching the torch module move first."""
    if "crypten" not in sys.modules:
        _alias_onnx_registry()
    try:
        return importlib.import_module("crypten")
    except ImportError as err:  # pragma: no cover - install problem, explain the fix
        raise ImportError(
            f"could not import crypten ({err}); install it with `make install` "
            "(pip install --no-deps crypten==0.4.1 plus onnx, omegaconf, pyyaml)"
        ) from err


crypten = import_crypten()
