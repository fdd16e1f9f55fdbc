//! System probes: process memory now; CPU and NVIDIA GPU readings arrive with the GUI's System panel.

/// Resident memory of this process in bytes, when the platform tells (Linux: /proc/self/statm).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size_bytes())
}

fn page_size_bytes() -> u64 {
    // Every Linux platform Wick runs on uses 4 KiB base pages; huge pages do not show in statm's count.
    4096
}

/// GPU memory this process holds on `device`, when the device can tell: for a CUDA device, NVML's reading of
/// this process's memory on that GPU; `None` on the CPU, and when NVML is missing or does not list us.
pub fn device_memory_bytes(device: &candle_core::Device) -> Option<u64> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    static NVML: std::sync::OnceLock<Option<nvml_wrapper::Nvml>> = std::sync::OnceLock::new();
    let nvml = NVML.get_or_init(|| nvml_wrapper::Nvml::init().ok()).as_ref()?;
    let gpu = nvml.device_by_index(u32::try_from(gpu_id).ok()?).ok()?;
    let pid = std::process::id();
    gpu.running_compute_processes().ok()?.into_iter().find(|p| p.pid == pid).and_then(|p| match p.used_gpu_memory {
        nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => Some(bytes),
        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
    })
}

/// `1.5 MiB`-style sizes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_reports_no_gpu_memory() {
        assert_eq!(super::device_memory_bytes(&candle_core::Device::Cpu), None);
    }
}
