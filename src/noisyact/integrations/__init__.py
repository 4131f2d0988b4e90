"""Adapters for third-party training frameworks (optional extras: ``pip install
'noisyact[integrations]'``). Each module imports its framework only when it is imported."""
