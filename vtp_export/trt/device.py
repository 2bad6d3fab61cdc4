"""TensorRT engines: where one can run, and the check that refuses an engine built for another device.

An engine is tied to the TensorRT version (major.minor) and the GPU's compute capability it was built
with. The engine folder's config.json records both; `check_engine_matches` compares them with this device.
"""

import ctypes
from dataclasses import dataclass
from pathlib import Path

from vtp_export.errors import EngineMismatchError
from vtp_export.records.engine import EngineRecord
from vtp_export.targets import version_tuple

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CU_COMPUTE_CAPABILITY_MAJOR, CU_COMPUTE_CAPABILITY_MINOR = 75, 76  # CUdevice_attribute values
# L4T major release -> JetPack line (r35: JetPack 5, r36: JetPack 6, r38: JetPack 7).
JETPACK_OF_L4T = {"35": "5", "36": "6", "38": "7"}


@dataclass(frozen=True)
class Device:
    """What an engine depends on, on this machine; fields are None where not found."""

    tensorrt: str | None
    gpu_name: str | None
    sm: int | None  # compute capability as 87 for 8.7
    jetpack: str | None

    def describe(self) -> str:
        gpu = f"{self.gpu_name} (sm_{self.sm})" if self.sm is not None else "no CUDA GPU"
        trt = f"TensorRT {self.tensorrt}" if self.tensorrt else "no TensorRT"
        jetpack = f", JetPack {self.jetpack}" if self.jetpack else ""
        return f"{trt}, {gpu}{jetpack}"


def jetpack_line() -> str | None:
    """JetPack major line from the L4T release file on a Jetson ('# R36 (release), REVISION: 4.3, ...')."""
    if not TEGRA_RELEASE.is_file():
        return None
    first = TEGRA_RELEASE.read_text().split(",")[0]
    release = first.strip("# ").removeprefix("R").split(" ")[0]
    return JETPACK_OF_L4T.get(release, f"L4T r{release}")


def this_device() -> Device:
    """TensorRT (the full package, not TensorRT-RTX) and the first CUDA GPU, as far as they are present."""
    try:
        import tensorrt

        version = tensorrt.__version__
    except Exception:  # not installed, or its libraries do not load
        version = None
    name, sm = first_cuda_gpu()
    return Device(tensorrt=version, gpu_name=name, sm=sm, jetpack=jetpack_line())


def first_cuda_gpu() -> tuple[str | None, int | None]:
    """Name and compute capability of CUDA device 0 through the driver library (no PyTorch needed: device
    deployments run without it); (None, None) where there is no driver or no GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = (lambda: cuda.cuInit(0), lambda: cuda.cuDeviceGet(ctypes.byref(device), 0),
             lambda: cuda.cuDeviceGetName(name, len(name), device),
             lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_COMPUTE_CAPABILITY_MAJOR, device),
             lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_COMPUTE_CAPABILITY_MINOR, device))
    if any(call() != 0 for call in calls):  # CUDA_SUCCESS is 0
        return None, None
    return name.value.decode(errors="replace"), major.value * 10 + minor.value


def check_engine_matches(record: EngineRecord, device: Device) -> None:
    """Refuse, in one line, an engine whose TensorRT major.minor or GPU compute capability differ from here."""
    built = record.gpu
    wanted = (f"TensorRT {record.tensorrt} for {built.name} (sm_{built.sm})"
              + (f", JetPack {record.jetpack}" if record.jetpack else ""))
    same_trt = device.tensorrt is not None and version_tuple(device.tensorrt)[:2] == version_tuple(record.tensorrt)[:2]
    if not same_trt or device.sm != built.sm:
        raise EngineMismatchError(f"the engines were built with {wanted}; this device has {device.describe()}: "
                                  "rebuild them here with vtp-export build")
