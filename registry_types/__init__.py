"""The bottom of the house: plain types and helpers every other package may import.

``registry_types`` imports nothing from the project. Feeds (``adapters``) produce ``Record``s
and ``Issue``s, the store (``registry_store``) keeps them and mapping (``mappings``) reports
``Issue``s; defining them here lets each of those depend on this package instead of on one
another (the layers are listed in the README, "Contributing: architecture", and
``tests/architecture/test_layers.py`` keeps them so).
"""
