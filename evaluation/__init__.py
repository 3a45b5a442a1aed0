"""The evaluation library: speech data, corpus, degradations, scoring, hybrid sweep, plot."""
