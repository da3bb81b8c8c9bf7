"""One module per screen: worklist, study, thresholds, training, help, welcome."""
