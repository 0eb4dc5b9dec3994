"""The GPU suite (`python -m pytest tests/gpu`).

This folder is a package on purpose: a conftest.py outside a package is imported under the bare
name `conftest`, and pytest drops the `conftest` already in sys.modules before importing it, so
tests/conftest.py would be shadowed and every `from conftest import ...` in tests/ would break.
As a package, this folder's conftest is `gpu.conftest` and tests/conftest.py stays `conftest`.
"""
