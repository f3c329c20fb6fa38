"""CLI command groups, one module per stage; each defines ``register(app)``."""

#: ``--seed`` help of the commands that draw no random numbers (every command takes --seed,
#: so one script line can pass the same seed to all of them)
INFERENCE_SEED_HELP = (
    "No effect: inference draws no random numbers (accepted so every command takes --seed)."
)
EVALUATION_SEED_HELP = (
    "No effect: evaluation draws no random numbers and splits patients with the run's own "
    "split_seed (accepted so every command takes --seed)."
)
