"""Helpers shared by test directories (on the path as `support`: see `pythonpath` in
pyproject.toml). Fixtures stay in each directory's conftest.py."""
