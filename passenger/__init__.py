"""passenger: an application server on Twisted that runs any web app in any language."""

from __future__ import annotations

import os
import sysconfig

__version__ = "0.1.0"

#: The file ending of a compiled module here (``.cpython-311-x86_64-linux-gnu.so``).
EXT_SUFFIX: str = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def stale_compiled_module(root: str) -> str | None:
    """In a checkout (``root``/../.git), a module compiled by mypyc (setup.py) is imported instead
    of its source, so a source changed since would not run: the message saying so, or None."""
    checkout = os.path.join(root, os.pardir)
    if not os.path.isdir(os.path.join(checkout, ".git")):
        return None  # installed: the compiled modules and their sources came together
    # The code is in one library for all of them; each module's own file only loads it.
    library = os.path.join(checkout, "passenger__mypyc" + EXT_SUFFIX)
    built = os.path.getmtime(library) if os.path.exists(library) else 0.0
    for package in ("http", "pool"):
        directory = os.path.join(root, package)
        for name in sorted(os.listdir(directory)):
            if not name.endswith(EXT_SUFFIX):
                continue
            compiled = os.path.join(directory, name)
            source = compiled[: -len(EXT_SUFFIX)] + ".py"
            if os.path.exists(source) and os.path.getmtime(source) > max(built, os.path.getmtime(compiled)):
                return (f"{source} changed after it was compiled, and {name} would run instead of it. "
                        "Rebuild with `make build`, or run the sources: `make pure` removes the compiled modules")
    return None


_stale = stale_compiled_module(os.path.dirname(os.path.abspath(__file__)))
if _stale is not None:
    raise ImportError(_stale)
