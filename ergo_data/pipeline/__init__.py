"""The engine: the stage/source contract, registries, recipes, outputs, progress, queries and the executors."""
