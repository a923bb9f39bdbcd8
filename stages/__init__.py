"""thinkrl's command line: one thin typer module per stage. Each parses options and calls one plain
function of the `thinkrl` library; only this package knows about run directories and argv."""
