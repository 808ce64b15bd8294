"""Scales, devices and precision: what runs where."""

import contextlib
import warnings

import pytest
import torch

from rlhf_lab.config import autocast, get_scale


def test_the_scale_is_gpu_on_cuda_and_laptop_otherwise(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_scale() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_scale() == "laptop"
    monkeypatch.setenv("RLHF_LAB_SCALE", "ci")
    assert get_scale() == "ci" and get_scale("laptop") == "laptop"
    with pytest.raises(ValueError, match="valid scales: ci, laptop, gpu"):
        get_scale("huge")


def test_mixed_precision_only_on_a_gpu_with_native_bf16(monkeypatch):
    assert isinstance(autocast("cpu"), contextlib.nullcontext), "a CPU always runs in float32"
    assert isinstance(autocast(torch.device("cuda"), enabled=False), contextlib.nullcontext)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a Colab T4
    assert isinstance(autocast("cuda"), contextlib.nullcontext)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" where the test runs on a CPU
        context = autocast("cuda")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
