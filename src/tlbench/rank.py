"""`python -m tlbench.rank`: transferability scores of backbones on the training images, before training
(the code is in tlbench.run.rank; docs/RANK.md says what the scores mean).

    python -m tlbench.rank experiment=hymenoptera 'rank.backbones=[efficientnet_lite0,resnet18]'
"""

from tlbench.run.rank import main, rank

__all__ = ["main", "rank"]

if __name__ == "__main__":
    main()
