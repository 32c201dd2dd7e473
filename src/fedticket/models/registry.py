"""Model registry: name -> classifier = body + head, each body with a mirrored decoder.

Every body ends in a feature vector; the head is one linear layer to the classes.
The decoder of a body mirrors it layer by layer (linear back to the last feature
map, then upsample + conv per conv layer) and returns *logits* of the input image;
``torch.sigmoid`` of them is the reconstruction in [0, 1].
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from fedticket.errors import ConfigError
from fedticket.models.adapt import build_user_model
from fedticket.models.base import Classifier, fast_layout, plain_layout
from fedticket.models.resnet import resnet
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import ModelSpec

__all__ = ["REGISTRY", "Classifier", "build", "fast_layout", "plain_layout", "prunable_names"]


def _conv_classifier(
    input_shape: tuple[int, int, int],
    num_classes: int,
    channels: tuple[int, ...],
    kernel: int,
    features: int,
) -> Classifier:
    """conv(k)-relu-maxpool2 per entry of ``channels``, then fc-``features``-relu; head fc.

    Each block pools before its ReLU. ReLU is monotone, so ``relu(maxpool(x))`` equals
    ``maxpool(relu(x))`` bit for bit, gradients included (the max of a window is
    positive exactly when the chosen element is), and the ReLU touches a quarter of the
    values: the server's evaluation of Fashion-MNIST on one thread takes 0.95x as long,
    a client update 0.99x (``benchmarks/block_order.py``)."""
    c_in, h, w = input_shape
    down = 2 ** len(channels)
    if h % down or w % down:
        raise ConfigError(
            f"input {h}x{w} is not divisible by {down} for a {len(channels)}-conv model; "
            "pick a model made for this input size"
        )
    layers: dict[str, nn.Module] = {}
    prev = c_in
    for i, c in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(prev, c, kernel, padding=kernel // 2)
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        layers[f"relu{i}"] = nn.ReLU()
        prev = c
    fh, fw = h // down, w // down
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(prev * fh * fw, features)
    layers["relu_fc1"] = nn.ReLU()
    body = nn.Sequential(OrderedDict(layers))

    def decoder() -> nn.Module:
        d: dict[str, nn.Module] = {
            "fc": nn.Linear(features, prev * fh * fw),
            "relu_fc": nn.ReLU(),
            "unflatten": nn.Unflatten(1, (prev, fh, fw)),
        }
        outs = [c_in, *channels[:-1]]
        for i in range(len(channels), 0, -1):
            d[f"up{i}"] = nn.Upsample(scale_factor=2, mode="nearest")
            d[f"deconv{i}"] = nn.Conv2d(channels[i - 1], outs[i - 1], kernel, padding=kernel // 2)
            if i > 1:
                d[f"relu{i}"] = nn.ReLU()
        return nn.Sequential(OrderedDict(d))

    return Classifier(body, nn.Linear(features, num_classes), decoder)


def _mlp(
    input_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...]
) -> Classifier:
    """flatten, fc-relu per hidden size; head fc."""
    n_in = input_shape[0] * input_shape[1] * input_shape[2]
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    sizes = [n_in, *hidden]
    for i in range(len(hidden)):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        layers[f"relu{i + 1}"] = nn.ReLU()
    body = nn.Sequential(OrderedDict(layers))

    def decoder() -> nn.Module:
        d: dict[str, nn.Module] = {}
        for i in range(len(hidden), 0, -1):
            d[f"fc{i}"] = nn.Linear(sizes[i], sizes[i - 1])
            if i > 1:
                d[f"relu{i}"] = nn.ReLU()
        d["unflatten"] = nn.Unflatten(1, input_shape)
        return nn.Sequential(OrderedDict(d))

    return Classifier(body, nn.Linear(hidden[-1], num_classes), decoder)


Builder = Callable[["ModelSpec", tuple[int, int, int], int], Classifier]

# The FedAvg paper's CNN (McMahan et al. 2017, "CNN" for MNIST): 1,663,370 parameters
# on 1x28x28 inputs with 10 classes. cnn-digits is its scaled-down sibling for 8x8
# digits; cnn-cifar the same shape for 3x32x32 inputs.
def _cifar(shape: tuple[int, int, int], num_classes: int) -> Classifier:
    if shape[0] != 3:
        raise ConfigError(f"cnn-cifar expects 3-channel images, got shape {shape}")
    return _conv_classifier(shape, num_classes, (32, 64), 5, 512)


REGISTRY: Registry[Builder] = Registry("model.name")
"""The models a spec may name (``model.name``), besides a user's ``MODULE:FACTORY``."""
REGISTRY.add("cnn-fedavg", lambda s, shape, k: _conv_classifier(shape, k, (32, 64), 5, 512))
REGISTRY.add("cnn-digits", lambda s, shape, k: _conv_classifier(shape, k, (16, 32), 3, 64))
REGISTRY.add("cnn-cifar", lambda s, shape, k: _cifar(shape, k))
REGISTRY.add("mlp", lambda s, shape, k: _mlp(shape, k, s.hidden))
REGISTRY.add("resnet8", lambda s, shape, k: resnet(shape, k))


def build(spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    """Build the classifier named by ``spec`` for the given input shape and classes:
    a registry model, or the user's ``PACKAGE.MODULE:FACTORY`` (:mod:`.adapt`)."""
    if spec.is_user_model:
        return build_user_model(spec.name, input_shape, num_classes, spec.head)
    return REGISTRY[spec.name](spec, input_shape, num_classes)


def prunable_names(
    model: Classifier, *, include_head: bool = False, include_biases: bool = False
) -> list[str]:
    """Names of the parameters pruning may touch, in ``named_parameters`` order.

    Only the weights (and, if asked, biases) of convolution and linear layers: by
    default those of the body, the part the DAE pretrains and the part that holds
    nearly all parameters. The head is not pretrained by the DAE (its magnitudes carry
    no information) and biases are few (0.1% of the FedAvg CNN), so both stay dense
    unless asked. Normalisation layers (BatchNorm's weight, bias and running
    statistics) and every buffer are never prunable: a BatchNorm bias or running mean
    that is zero is a value, not a pruned weight.
    """
    names = []
    for path, m in model.named_modules():
        if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        if (path == "head" or path.startswith("head.")) and not include_head:
            continue
        names.append(f"{path}.weight")
        if m.bias is not None and include_biases:
            names.append(f"{path}.bias")
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    return sorted(names, key=order.__getitem__)
