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
