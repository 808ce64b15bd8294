"""Scales, devices and precision: what runs where."""

import contextlib
import warnings

import pytest
import torch

from rlhf_lab.config import autocast, fused, get_scale


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


def test_fused_adam_makes_the_same_update_and_falls_back_where_torch_has_none():
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=generator), torch.randn(3, generator=generator)]
    gradients = [torch.randn(5, 3, generator=generator), torch.randn(3, generator=generator)]
    results = []
    for make in (lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01),
                 lambda p: fused(torch.optim.AdamW, p, lr=0.1, weight_decay=0.01)):
        parameters = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(parameters)
        for _ in range(3):
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = gradient.clone()
            optimizer.step()
        results.append(torch.cat([p.detach().reshape(-1) for p in parameters]))
    # Steps of 0.1 computed in another order: equal up to float32 rounding.
    assert torch.allclose(results[0], results[1], atol=1e-6)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4):  # torch's fused CPU kernels
        assert optimizer.defaults["fused"]

    class NoFusedKernel(torch.optim.Adam):  # what torch does where it has no fused kernel for the device
        def __init__(self, params, fused=None, **settings):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            super().__init__(params, **settings)

    fallback = fused(NoFusedKernel, (p for p in [torch.nn.Parameter(torch.zeros(2))]), lr=0.1)
    assert len(fallback.param_groups[0]["params"]) == 1 and not fallback.defaults.get("fused")
