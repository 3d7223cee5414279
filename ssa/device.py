"""Where the engine's tensors live, and every crossing between host memory and them.

The engine keeps its data on one torch device (the CPU in CI, a GPU on a GPU node). Host <->
device moves happen only through `to_device` and `to_host`, which count them in `TRANSFERS` by
what is moved, so benchmarks report bytes per mask and tests can require that no model boundary
passes a key/value cache, activations or pixels through host memory. Between models, tensors pass
by DLPack (`as_ortvalue`, `from_dlpack`): no copy, whatever the device.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import numpy as np
import torch


class Transfers:
    """Bytes of host <-> device moves, by direction and by what was moved."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, direction: str, what: str, nbytes: int) -> None:
        with self._lock:
            self.bytes[(direction, what)] += int(nbytes)

    def total(self, direction: str | None = None, exclude: tuple[str, ...] = ()) -> int:
        return sum(b for (d, w), b in self.bytes.items() if (direction in (None, d)) and w not in exclude)

    def summary(self) -> dict[str, dict[str, int]]:
        """{"up": {what: bytes}, "down": {what: bytes}}."""
        out: dict[str, dict[str, int]] = {"up": {}, "down": {}}
        for (d, w), b in sorted(self.bytes.items()):
            out[d][w] = b
        return out


TRANSFERS = Transfers()


def resolve(device: str | torch.device) -> torch.device:
    """A torch device from "cpu", "cuda", "cuda:1", ...; a clear error where it is not available."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this PyTorch has no usable CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (cpu or cuda)")
    return dev


def instance_device(on_gpu: bool, device_id: int | str = 0) -> torch.device:
    """The torch device of a Triton model instance (`model_instance_device_id` on a GPU), made the
    current CUDA device: torch's DLPack export refuses a tensor that is not on the current device,
    and on a multi-GPU node only GPU 0 is current unless set."""
    if not on_gpu:
        return torch.device("cpu")
    device = torch.device("cuda", int(device_id))
    torch.cuda.set_device(device)
    return device


def to_device(array: np.ndarray, device: torch.device, what: str) -> torch.Tensor:
    """Host array -> tensor on `device` (counted as an upload of `what`)."""
    TRANSFERS.add("up", what, array.nbytes)
    array = np.ascontiguousarray(array)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensor.to(device, non_blocking=False) if device.type != "cpu" else tensor


def to_host(tensor: torch.Tensor, what: str) -> np.ndarray:
    """Tensor -> host NumPy array (counted as a download of `what`)."""
    TRANSFERS.add("down", what, tensor.numel() * tensor.element_size())
    return tensor.detach().cpu().numpy()


def handover(device: torch.device) -> None:
    """Before ONNX Runtime reads tensors torch made (or writes memory torch may still be reading),
    wait for the work queued on torch's current stream of `device`. ONNX Runtime's CUDA provider
    runs on its own stream and is handed no stream with DLPack, so nothing else orders the two
    (onnxruntime issues 11875, 26609); its `run` returns with its own stream synchronised, so the
    other direction needs nothing. On the CPU there is nothing queued: a no-op."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def as_ortvalue(tensor: torch.Tensor):
    """An ONNX Runtime OrtValue sharing the tensor's memory (CPU or CUDA), by DLPack.

    onnxruntime 1.26 and later take any DLPack object; some releases take a capsule and a bool
    flag (TypeError with a tensor); 1.23.x - 1.25.x have no Python `OrtValue.from_dlpack` at all
    (AttributeError): there a CPU tensor is shared through NumPy, and a CUDA tensor is refused with
    the reason (a silent copy through the host would defeat the device-resident data plane)."""
    import onnxruntime as ort

    tensor = tensor.contiguous()
    if not hasattr(ort.OrtValue, "from_dlpack"):
        if tensor.device.type != "cpu":
            raise RuntimeError(f"onnxruntime {ort.__version__} has no OrtValue.from_dlpack, so it cannot take "
                               f"{tensor.device} tensors in place; install onnxruntime-gpu 1.26.0 or later")
        return ort.OrtValue.ortvalue_from_numpy(tensor.numpy())
    try:
        return ort.OrtValue.from_dlpack(tensor)
    except TypeError:  # older releases take a capsule and a bool flag
        return ort.OrtValue.from_dlpack(torch.utils.dlpack.to_dlpack(tensor), tensor.dtype == torch.bool)


def from_dlpack(value) -> torch.Tensor:
    """A torch tensor sharing the memory of an OrtValue or a Triton tensor (by DLPack; an OrtValue
    of an onnxruntime without DLPack methods, on the CPU, through NumPy)."""
    if hasattr(value, "__dlpack__"):
        return torch.from_dlpack(value)
    if hasattr(value, "to_dlpack"):
        return torch.utils.dlpack.from_dlpack(value.to_dlpack())
    return torch.from_numpy(value.numpy())
