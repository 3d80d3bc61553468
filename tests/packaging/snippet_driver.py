"""Runs the README's drop-in snippet in an installed environment (not imported by the test suite).

``python snippet_driver.py SNIPPET CHECKOUT`` executes the snippet statement by statement with a
fresh tiny MLP bound to ``model``; every statement that binds ``opt`` to an optimizer is followed
by a few training steps on one fixed batch, which must lower the loss. It prints one line per
optimizer and exits non-zero on any failure, including a ``tritonkron`` imported from CHECKOUT
instead of the installed wheel.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import torch


def fresh_model() -> torch.nn.Module:
    """The same small MLP every time."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> tuple[float, float]:
    """First and last loss of ``steps`` optimizer steps on one fixed batch."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses[0], losses[-1]


def main(snippet_path: str, checkout: str) -> int:
    """Run the snippet; returns the exit status."""
    namespace: dict[str, object] = {}
    trained = 0
    for node in ast.parse(Path(snippet_path).read_text(encoding="utf-8")).body:
        namespace["model"] = fresh_model()
        namespace.pop("opt", None)
        exec(compile(ast.Module(body=[node], type_ignores=[]), "README.md", "exec"), namespace)
        opt = namespace.get("opt")
        if not isinstance(opt, torch.optim.Optimizer):
            continue
        first, last = train(namespace["model"], opt)  # type: ignore[arg-type]
        print(f"{type(opt).__name__}: loss {first:.4f} -> {last:.4f}")
        if not last < first:
            print("error: the loss did not decrease", file=sys.stderr)
            return 1
        trained += 1
    tk = sys.modules.get("tritonkron")
    where = Path(getattr(tk, "__file__", "") or "").resolve()
    if tk is None or Path(checkout).resolve() in where.parents:
        print(f"error: tritonkron was not imported from the installed wheel ({where})", file=sys.stderr)
        return 1
    print(f"drop-in ok: {trained} optimizers from {where.parent}")
    return 0 if trained else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
