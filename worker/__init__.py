"""trainboard's worker: claims jobs, supervises one training child per slot, trains with W&B."""
