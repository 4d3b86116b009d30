"""Inference stage: sliding-window prediction, metrics, evaluation and prediction.

Takes a checkpoint and either a shard store split (``evaluate``: Dice and
HD95 of WT/TC/ET for all 15 modality subsets) or patient folders with any
modalities (``predict``: label maps in the original grid and label values).
"""

from __future__ import annotations

from train.inference.evaluate import (
    FIGURE_SUBSETS,
    NUM_CLASSES,
    EvaluationOptions,
    EvaluationResult,
    evaluate,
    evaluate_model,
    evaluate_sample,
    predict_labels,
)
from train.inference.loading import InferenceModel, load_for_inference
from train.inference.metrics import case_metrics, conventions, dice, hd95
from train.inference.predict import (
    FolderPrediction,
    PredictionResult,
    predict,
    predict_case,
    predict_folder,
)
from train.inference.sliding_window import WindowOptions, predict_subsets, window_boxes

__all__ = [
    "EvaluationOptions",
    "EvaluationResult",
    "FIGURE_SUBSETS",
    "FolderPrediction",
    "InferenceModel",
    "NUM_CLASSES",
    "PredictionResult",
    "WindowOptions",
    "case_metrics",
    "conventions",
    "dice",
    "evaluate",
    "evaluate_model",
    "evaluate_sample",
    "hd95",
    "load_for_inference",
    "predict",
    "predict_case",
    "predict_folder",
    "predict_labels",
    "predict_subsets",
    "window_boxes",
]
