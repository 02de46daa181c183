"""omni3's common library: what every stage tool shares.

- ``errors``: the error types and the exit codes they map to.
- ``settings``: the pydantic-settings base (``OMNI3_`` environment, settings file, precedence).
- ``manifest`` and ``publish``: the artifact protocol on shared storage (see ``PROTOCOL.md``).
- ``cli``: the Fire runner that turns errors into one line and an exit code.
- ``progress``: progress lines for long work.
"""

__version__ = "0.1.0"
