"""eva-plugin: EVA (Evolving Alignment via Asymmetric Self-Play) for TRL recipes."""

import pluggy

__version__ = "0.1.0"

#: Marker for plugin implementations: decorate ``register_*`` functions with it.
hookimpl = pluggy.HookimplMarker("eva_plugin")

__all__ = ["__version__", "hookimpl"]
