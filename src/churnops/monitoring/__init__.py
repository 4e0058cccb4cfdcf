"""The feedback loop: the prediction store, late churn outcomes joined back, realised and
estimated quality per version, drift, and the monitor that turns them into alerts and advice."""
