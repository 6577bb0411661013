"""Tables, plots and figures: how results are shown (console tables, report tables, trade-off plots, separation figures)."""
