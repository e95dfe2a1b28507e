"""Where both stages meet: the demo and ``msmtfn-predict`` (new recordings). Only public APIs of
extract/ and train/."""
