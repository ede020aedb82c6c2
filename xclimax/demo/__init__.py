"""The demo atmosphere and the bundled tutorial data and model (public as ``xclimax.tutorial``)."""
