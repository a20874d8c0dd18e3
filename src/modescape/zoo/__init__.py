"""Zoo of ready-made datasets and models, so experiments can be named on the command line.

`load_dataset("digits")` and `build_model("resnet", input_shape, num_classes, depth=20)` give
deterministic, in-memory data and plain `nn.Module`s that work with torch.fx and torch.func.
"""

from modescape.zoo.data import DataSplit, as_split, dataset_names, load_dataset, train_test
from modescape.zoo.models import BasicBlock, build_model, model_names

__all__ = [
    "BasicBlock",
    "DataSplit",
    "as_split",
    "build_model",
    "dataset_names",
    "load_dataset",
    "model_names",
    "train_test",
]
