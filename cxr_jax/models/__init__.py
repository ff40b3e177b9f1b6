"""Encoders (ResNet v1.5) and heads (SSL projector/predictor, classifier)."""

from cxr_jax.models.heads import ClassifierModel
from cxr_jax.models.heads import Predictor
from cxr_jax.models.heads import ProjectionMLP
from cxr_jax.models.heads import SSLModel
from cxr_jax.models.resnet import BasicBlock
from cxr_jax.models.resnet import BottleneckBlock
from cxr_jax.models.resnet import build_encoder
from cxr_jax.models.resnet import Conv3x3
from cxr_jax.models.resnet import conv3x3_small_map
from cxr_jax.models.resnet import ENCODERS
from cxr_jax.models.resnet import ResNet
from cxr_jax.models.resnet import resnet18
from cxr_jax.models.resnet import resnet34
from cxr_jax.models.resnet import resnet50

__all__ = [
    'BasicBlock',
    'BottleneckBlock',
    'ClassifierModel',
    'Conv3x3',
    'ENCODERS',
    'Predictor',
    'ProjectionMLP',
    'ResNet',
    'SSLModel',
    'build_encoder',
    'conv3x3_small_map',
    'resnet18',
    'resnet34',
    'resnet50',
]
