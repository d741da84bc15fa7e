"""qdtool's library: no printing, no typer, no rich; results are returned, progress goes to callbacks."""
