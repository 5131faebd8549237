"""Training SAM the way the paper describes: losses, simulated interactive prompts, MAE pretraining, trainer."""
