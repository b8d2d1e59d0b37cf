"""Modules generated from proto/hyprstream/v1 when the package is built (setup.py); not in the source tree."""
