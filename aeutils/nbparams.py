"""How values reach a notebook: one rule, applied by one call.

1. The first code cell, tagged ``parameters``, holds the **full-size literals** (what ``make demo`` runs;
   papermill's ``-p NAME value`` replaces them).
2. The cell right after it calls :func:`settle` once. Under ``CI`` (``make test`` sets ``CI=true``) it
   applies the notebook's **smoke sizes** (the ``smoke=`` dict: seconds-long runs of the same code);
   then an environment variable ``MSCOPY_<NAME>`` overrides parameter ``NAME`` (``MSCOPY_EPOCHS=20``,
   ``MSCOPY_TIME_BUDGET=1h``), read as a Python literal when it is one (``20``, ``(16, 16, 8)``,
   ``None``), else as text. Order: literal < CI size < environment.
3. Nothing else in a notebook reads the environment. ``MSCOPY_WORK`` moves the output folder: outputs go
   to ``WORK/full`` (``WORK/smoke`` under ``CI``), ``WORK`` being ``../work`` (the repository's ``work/``
   seen from ``notebooks/``) unless set.

In a notebook::

    SMOKE, WORK = settle(globals(), smoke=dict(EPOCHS=2, BATCH_SIZE=4))
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Mapping, MutableMapping

__all__ = ["ENV_PREFIX", "WORK_ENV", "settle", "is_smoke", "work_dir"]

#: ``MSCOPY_<NAME>`` overrides notebook parameter ``NAME``
ENV_PREFIX = "MSCOPY_"
#: moves the notebooks' output folder (``make demo`` sets it to the repository's ``work/``)
WORK_ENV = "MSCOPY_WORK"


def is_smoke(environ: Mapping[str, str] | None = None) -> bool:
    """Whether notebooks run at their smoke sizes: ``CI`` is set (to anything), as ``make test`` does."""
    return "CI" in (os.environ if environ is None else environ)


def work_dir(smoke: bool, environ: Mapping[str, str] | None = None) -> Path:
    """The notebooks' output folder: ``$MSCOPY_WORK`` (default ``../work``), absolute, then ``smoke`` or ``full``."""
    env = os.environ if environ is None else environ
    return Path(env.get(WORK_ENV, "../work")).resolve() / ("smoke" if smoke else "full")


def _is_parameter(name: str) -> bool:
    return name.isupper() and not name.startswith("_")


def _from_env(name: str, text: str, current: Any) -> Any:
    """``text`` as a Python literal if it is one, else as text; ValueError if the parameter is a number,
    tuple or bool and the text is not one of those."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool) or not isinstance(current, (int, float, tuple, list)) or current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, type(current)) or isinstance(value, bool):
        raise ValueError(
            f"{ENV_PREFIX}{name}={text!r}: parameter {name} is a {type(current).__name__} ({current!r}); "
            f"give one, e.g. {ENV_PREFIX}{name}={current!r}"
        )
    return value


def settle(
    namespace: MutableMapping[str, Any],
    smoke: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    outputs: bool = True,
    quiet: bool = False,
) -> tuple[bool, Path]:
    """Apply the rule above to a notebook's parameters (the upper-case names in ``namespace``, its
    ``globals()``), in place: ``smoke`` values under ``CI``, then ``MSCOPY_<NAME>`` overrides.
    Returns ``(smoke, work)``: whether the smoke sizes apply, and the output folder (:func:`work_dir`).
    Prints one line saying what changed and (``outputs``, for a notebook that writes files) where outputs
    go; ``quiet``: nothing.
    ValueError for a ``smoke`` name that is not a parameter, or an override of the wrong type."""
    env = os.environ if environ is None else environ
    on = is_smoke(env)
    params = {k for k in namespace if _is_parameter(k)}
    unknown = sorted(set(smoke or {}) - params)
    if unknown:
        raise ValueError(f"smoke sizes for {', '.join(unknown)}, which the parameters cell does not define")
    said = []
    if on and smoke:
        namespace.update(smoke)
        said.append("CI sizes " + ", ".join(f"{k}={v!r}" for k, v in smoke.items()))
    overrides = {k: env[ENV_PREFIX + k] for k in sorted(params) if ENV_PREFIX + k in env}
    for name, text in overrides.items():
        namespace[name] = _from_env(name, text, namespace[name])
    if overrides:
        said.append("from the environment " + ", ".join(f"{k}={namespace[k]!r}" for k in overrides))
    work = work_dir(on, env)
    if not quiet:
        where = f"; outputs under {work}" if outputs else ""
        print(f"parameters: {'; '.join(said) or 'as in the cell above'}{where}")
    return on, work
