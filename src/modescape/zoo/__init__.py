"""Zoo of ready-made datasets and models, so experiments can be named on the command line.

`load_dataset("digits")` and `build_model("resnet", input_shape, num_classes, depth=20)` give
deterministic, in-memory data and plain `nn.Module`s that work with torch.fx and torch.func; the
sequence tasks ``modular-add`` and ``char-lm`` go with ``build_model("transformer", ...)``.
"""

from modescape.zoo.data import DataSplit, as_split, corpus_text, dataset_names, load_dataset, train_test
from modescape.zoo.models import BasicBlock, SelfAttention, Transformer, build_model, model_names

__all__ = [
    "BasicBlock",
    "DataSplit",
    "SelfAttention",
    "Transformer",
    "as_split",
    "corpus_text",
    "build_model",
    "dataset_names",
    "load_dataset",
    "model_names",
    "train_test",
]
