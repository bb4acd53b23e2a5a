"""Names, numbers and wire shapes of the external contract: pure data, standard library only."""
