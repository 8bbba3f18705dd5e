"""`python -m tlbench.train`: one run, or a sweep with `-m` (the code is in tlbench.run.train).

    python -m tlbench.train strategy=partial backbone=resnet152
    python -m tlbench.train -m strategy=freeze,partial,full backbone=resnet18,resnet50 seed=0,1,2

From Python: `tlbench.train.run(["experiment=hymenoptera", "strategy=partial"])`.
"""

from tlbench.run.train import compose_config, main, run, train

__all__ = ["compose_config", "main", "run", "train"]

if __name__ == "__main__":
    main()
