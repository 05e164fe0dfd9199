"""The fake cluster's nodes and the repository paths the e2e tests share."""

from __future__ import annotations

from tests.support.k8s import FakeNode
from tests.support.process import REPO_ROOT

CHART = REPO_ROOT / "charts" / "weightstream"

GPU_TAINT_NVIDIA = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TAINT_AMD = {"key": "amd.com/gpu", "value": "present", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "value": "inference", "effect": "NoSchedule"}
INSTANCE = "node.kubernetes.io/instance-type"

# Two GPU nodes (one NVIDIA, one AMD, tainted as the GPU operators do), two CPU nodes. The
# instance-type label and the `dedicated` taint match tests/chart/values/gpu-only.yaml.
NODES = (
    FakeNode(name="gpu-nvidia", labels={"nvidia.com/gpu.present": "true",
                                        INSTANCE: "p5.48xlarge"},
             taints=(GPU_TAINT_NVIDIA,), gpus=8),
    FakeNode(name="gpu-amd", labels={"feature.node.kubernetes.io/amd-gpu": "true",
                                     INSTANCE: "p5.48xlarge"},
             taints=(GPU_TAINT_AMD, DEDICATED), gpus=8),
    FakeNode(name="cpu-big", labels={INSTANCE: "p5.48xlarge"}),
    FakeNode(name="cpu-small", labels={INSTANCE: "m5.large"}),
)
GPU_NODES = frozenset({"gpu-nvidia", "gpu-amd"})
