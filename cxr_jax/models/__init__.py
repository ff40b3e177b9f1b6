"""Encoders (ResNet v1.5, DenseNet-BC) and their shared layers, the encoder registry,
heads (SSL projector/predictor, classifier), the lung U-Net and its trained segmenter."""

from cxr_jax.models.densenet import DenseNet
from cxr_jax.models.densenet import densenet121
from cxr_jax.models.densenet import densenet169
from cxr_jax.models.heads import ClassifierModel
from cxr_jax.models.heads import Predictor
from cxr_jax.models.heads import ProjectionMLP
from cxr_jax.models.heads import SSLModel
from cxr_jax.models.layers import Conv3x3
from cxr_jax.models.layers import conv3x3_small_map
from cxr_jax.models.layers import Encoder
from cxr_jax.models.registry import build_encoder
from cxr_jax.models.registry import ENCODERS
from cxr_jax.models.resnet import BasicBlock
from cxr_jax.models.resnet import BottleneckBlock
from cxr_jax.models.resnet import ResNet
from cxr_jax.models.resnet import resnet18
from cxr_jax.models.resnet import resnet34
from cxr_jax.models.resnet import resnet50

__all__ = [
    'BasicBlock',
    'BottleneckBlock',
    'ClassifierModel',
    'Conv3x3',
    'DenseNet',
    'ENCODERS',
    'Encoder',
    'Predictor',
    'ProjectionMLP',
    'ResNet',
    'SSLModel',
    'build_encoder',
    'conv3x3_small_map',
    'densenet121',
    'densenet169',
    'resnet18',
    'resnet34',
    'resnet50',
]
