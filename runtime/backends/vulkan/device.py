"""Vulkan device discovery for the Vulkan backend: which devices exist, their limits, kp.Manager.

kp.Manager() aborts the whole process when no Vulkan driver is present (it ignores the result of
vkCreateInstance), so devices are first probed through the loader with ctypes. Limits kp does not
expose (storage-buffer range, push-constant size, ...) come from `vulkaninfo --json` when it is
installed; otherwise the Vulkan spec's guaranteed minimums are assumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from ...errors import BackendUnavailableError

_DEVICE_TYPES = {0: "other", 1: "integrated GPU", 2: "discrete GPU", 3: "virtual GPU", 4: "CPU"}


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    device_type: str             # "discrete GPU", "CPU", ...
    max_storage_buffer_range: int = 1 << 27     # spec minimum: 128 MiB
    max_allocation: int = 1 << 30               # spec minimum (maintenance3): 1 GiB
    max_push_constants: int = 128
    max_shared_memory: int = 16384
    max_storage_buffers: int = 4
    subgroup_size: int = 0
    timestamp_period_ns: float = 1.0
    limits_known: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.device_type == "CPU"


class _AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class _InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.c_void_p), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def probe_devices() -> list[tuple[str, str]]:
    """(name, type) of every physical device the Vulkan loader reports; raises when there is no
    loader or no driver."""
    libname = ctypes.util.find_library("vulkan") or "libvulkan.so.1"
    try:
        vk = ctypes.CDLL(libname)
    except OSError as e:
        raise BackendUnavailableError(f"no Vulkan loader (libvulkan) on this machine: {e}") from None
    app = _AppInfo(sType=0, pApplicationName=b"g4rt", apiVersion=(1 << 22) | (1 << 12))
    info = _InstanceInfo(sType=1, pApplicationInfo=ctypes.cast(ctypes.pointer(app), ctypes.c_void_p))
    inst = ctypes.c_void_p()
    rc = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(inst))
    if rc != 0:
        raise BackendUnavailableError(f"no usable Vulkan driver (vkCreateInstance returned {rc}); "
                                      f"install one (e.g. mesa-vulkan-drivers for the CPU driver lavapipe)")
    try:
        n = ctypes.c_uint32(0)
        rc = vk.vkEnumeratePhysicalDevices(inst, ctypes.byref(n), None)
        if rc != 0 or n.value == 0:
            raise BackendUnavailableError("the Vulkan loader found no device (no GPU driver, and no CPU "
                                          "driver such as lavapipe from mesa-vulkan-drivers)")
        handles = (ctypes.c_void_p * n.value)()
        vk.vkEnumeratePhysicalDevices(inst, ctypes.byref(n), handles)
        out = []
        for h in handles[:n.value]:
            # VkPhysicalDeviceProperties: 5 uint32 (apiVersion .. deviceType), then deviceName[256].
            buf = ctypes.create_string_buffer(4096)
            vk.vkGetPhysicalDeviceProperties(ctypes.c_void_p(h), buf)
            dtype = int.from_bytes(buf.raw[16:20], "little")
            name = buf.raw[20:276].split(b"\0", 1)[0].decode("utf-8", errors="replace")
            out.append((name, _DEVICE_TYPES.get(dtype, "other")))
        return out
    finally:
        vk.vkDestroyInstance(inst, None)


@functools.lru_cache(maxsize=None)
def _vulkaninfo_limits(index: int) -> dict:
    exe = shutil.which("vulkaninfo")
    if not exe:
        return {}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "caps.json")
        try:
            subprocess.run([exe, f"--json={index}", "-o", out], cwd=d, timeout=60, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as f:
                props = json.load(f)["capabilities"]["device"]["properties"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            return {}
    lim = props.get("VkPhysicalDeviceProperties", {}).get("limits", {})
    res = {}
    for key, name in (("maxStorageBufferRange", "max_storage_buffer_range"),
                      ("maxPushConstantsSize", "max_push_constants"),
                      ("maxComputeSharedMemorySize", "max_shared_memory"),
                      ("maxPerStageDescriptorStorageBuffers", "max_storage_buffers"),
                      ("timestampPeriod", "timestamp_period_ns")):
        if key in lim:
            res[name] = lim[key]
    m3 = props.get("VkPhysicalDeviceMaintenance3Properties", {})
    if "maxMemoryAllocationSize" in m3:
        res["max_allocation"] = m3["maxMemoryAllocationSize"]
    sg = props.get("VkPhysicalDeviceSubgroupProperties", {})
    if "subgroupSize" in sg:
        res["subgroup_size"] = sg["subgroupSize"]
    return res


def select_device(device: int | str = 0) -> DeviceInfo:
    """Resolve a device index or name substring (case-insensitive) against the probed devices."""
    devices = probe_devices()
    listing = ", ".join(f"[{i}] {n} ({t})" for i, (n, t) in enumerate(devices))
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    if isinstance(device, int):
        if not 0 <= device < len(devices):
            raise BackendUnavailableError(f"Vulkan device {device} does not exist (devices: {listing})")
        index = device
    else:
        hits = [i for i, (n, _) in enumerate(devices) if device.lower() in n.lower()]
        if not hits:
            raise BackendUnavailableError(f"no Vulkan device name contains {device!r} (devices: {listing})")
        index = hits[0]
    name, dtype = devices[index]
    lim = dict(_vulkaninfo_limits(index))
    return DeviceInfo(index, name, dtype, limits_known=bool(lim), **lim)


def import_kp():
    import logging
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        import kp
    except ImportError as e:
        raise BackendUnavailableError(
            f"the Vulkan backend needs Kompute's Python module `kp` ({e}); "
            f"install it with scripts/install_vulkan_deps.sh") from None
    # `import kp` calls logging.basicConfig(), which adds a stderr handler to the root logger
    # (and so silences the application's own later basicConfig): take it back out.
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
    return kp


def open_manager(info: DeviceInfo):
    kp = import_kp()
    try:
        return kp.Manager(info.index)
    except RuntimeError as e:
        raise BackendUnavailableError(f"cannot open Vulkan device {info.index} ({info.name}): {e}") from None
