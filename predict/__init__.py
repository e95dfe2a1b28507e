"""Where both stages meet: the demo, and (later) prediction on new recordings. Only public APIs of extract/ and train/."""
