"""Command modules of the ``streams`` CLI (internal).

Each module adds one command group with ``register(subparsers)``; :mod:`streams.cli` builds the parser from
them and dispatches.  Shared plumbing (common options, passphrases, atomic writes) is in ``_common``.
"""
