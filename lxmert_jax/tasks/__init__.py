"""One module per task: what it trains, on which data, and how it is evaluated."""
