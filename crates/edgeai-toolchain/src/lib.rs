//! Managed, pinned Python toolchains (uv or venv + pip) for vendor tools.
