"""The demo's defaults, shared by the command line (:mod:`.command`) and :func:`tempbalance.demo.run.run_demo`
(a module of their own, so neither of the two imports the other for them)."""
DEFAULT_SIZE = 32       # training sentences, ~0.05 % of SST-2's 67k
DEFAULT_SEEDS = 3
DEFAULT_EPOCHS = 10     # as the papers' RoBERTa runs
DEFAULT_LR = 1e-4
DEFAULT_OUT = "tempbalance-demo"
