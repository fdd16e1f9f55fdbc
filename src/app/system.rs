//! The System panel's logic: CPU (process and machine, from /proc), memory (process RSS, machine total and
//! available) and NVIDIA GPUs (NVML, loaded at run time) sampled about once a second on a worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};

/// How often the worker samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples kept for the history plots.
pub const HISTORY_LEN: usize = 300;

/// One GPU's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// Device name.
    pub name: String,
    /// Memory in use.
    pub mem_used_bytes: Option<u64>,
    /// Memory installed.
    pub mem_total_bytes: Option<u64>,
    /// Busy time in the last sample period, percent.
    pub util_percent: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
}

/// One reading of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSample {
    /// Seconds since the monitor started.
    pub at_secs: f64,
    /// This process's CPU use, percent of one core (may exceed 100 with several threads).
    pub process_cpu_percent: Option<f64>,
    /// The machine's CPU use, percent of all cores.
    pub machine_cpu_percent: Option<f64>,
    /// Logical cores.
    pub cores: usize,
    /// This process's resident memory.
    pub rss_bytes: Option<u64>,
    /// Machine memory installed.
    pub mem_total_bytes: Option<u64>,
    /// Machine memory available.
    pub mem_available_bytes: Option<u64>,
    /// The GPUs, or why NVML gave none (e.g. "NVML: a libloading error occurred…").
    pub gpus: Result<Vec<GpuReading>, String>,
}

/// (total, idle) jiffies of the `cpu` line of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if values.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice).
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// utime + stime (clock ticks) of a /proc/<pid>/stat line.
pub fn parse_self_stat(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid … utime is field 14, stime 15 of the whole line → indices 11, 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo.
pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Reads the NVIDIA GPUs through NVML.
struct GpuProbe {
    nvml: Result<nvml_wrapper::Nvml, String>,
}

impl GpuProbe {
    fn open() -> Self {
        Self { nvml: nvml_wrapper::Nvml::init().map_err(|e| format!("NVML: {e}")) }
    }

    fn read(&self) -> Result<Vec<GpuReading>, String> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(|e| format!("NVML: GPU {index}: {e}"))?;
            let memory = device.memory_info().ok();
            gpus.push(GpuReading {
                name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
                mem_used_bytes: memory.as_ref().map(|m| m.used),
                mem_total_bytes: memory.as_ref().map(|m| m.total),
                util_percent: device.utilization_rates().ok().map(|u| u.gpu),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            });
        }
        Ok(gpus)
    }
}

/// Samples the machine on a worker while the panel has been shown; keeps a short history.
pub struct SystemMonitor {
    /// Recent samples, newest last.
    pub history: VecDeque<SystemSample>,
    rx: Receiver<SystemSample>,
    stop: Arc<AtomicBool>,
}

impl SystemMonitor {
    /// Starts sampling; the worker wakes `ctx` after each sample.
    pub fn start(ctx: &egui::Context) -> Self {
        let (tx, rx) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ctx) = (stop.clone(), ctx.clone());
        let spawned = std::thread::Builder::new().name("system-monitor".into()).spawn(move || {
            let started = Instant::now();
            let gpu = GpuProbe::open();
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let mut last: Option<((u64, u64), Option<u64>)> = None;
            while !flag.load(Ordering::Relaxed) {
                let machine = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_proc_stat);
                let process = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_self_stat);
                let (mut machine_cpu_percent, mut process_cpu_percent) = (None, None);
                if let (Some((total, idle)), Some(((total0, idle0), process0))) = (machine, last) {
                    let dt = total.saturating_sub(total0) as f64;
                    if dt > 0.0 {
                        machine_cpu_percent = Some(100.0 * (1.0 - idle.saturating_sub(idle0) as f64 / dt));
                        if let (Some(p), Some(p0)) = (process, process0) {
                            // Jiffies of all cores: one core's share of the elapsed time is dt / cores.
                            process_cpu_percent = Some(100.0 * p.saturating_sub(p0) as f64 / (dt / cores as f64));
                        }
                    }
                }
                if let Some(machine) = machine {
                    last = Some((machine, process));
                }
                let (mem_total_bytes, mem_available_bytes) =
                    std::fs::read_to_string("/proc/meminfo").map(|t| parse_meminfo(&t)).unwrap_or((None, None));
                let sample = SystemSample {
                    at_secs: started.elapsed().as_secs_f64(),
                    process_cpu_percent,
                    machine_cpu_percent,
                    cores,
                    rss_bytes: crate::monitor::rss_bytes(),
                    mem_total_bytes,
                    mem_available_bytes,
                    gpus: gpu.read(),
                };
                if tx.send(sample).is_err() {
                    return;
                }
                ctx.request_repaint();
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the system monitor: {e}");
        }
        Self { history: VecDeque::new(), rx, stop }
    }

    /// Takes new samples.
    pub fn poll(&mut self) {
        while let Ok(sample) = self.rx.try_recv() {
            if self.history.len() == HISTORY_LEN {
                self.history.pop_front();
            }
            self.history.push_back(sample);
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&SystemSample> {
        self.history.back()
    }
}

impl Drop for SystemMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((980, 820)));
        let self_stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        assert_eq!(parse_self_stat(self_stat), Some(280));
        let meminfo = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:    8000 kB\n";
        assert_eq!(parse_meminfo(meminfo), (Some(16000 * 1024), Some(8000 * 1024)));
    }
}
