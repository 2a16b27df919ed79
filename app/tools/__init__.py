"""Tools: a registry of strictly validated, sandboxed functions (see app.tools.registry)."""
