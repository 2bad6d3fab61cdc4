"""The vision graph's towers: torch modules, imported only by the export side and the torch backend."""
