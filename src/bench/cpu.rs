//! CPU time per process as the kernel counts it (Linux `/proc/<pid>/stat`), for cost-per-event figures.

use std::path::Path;

/// User plus system CPU time of process `pid` (all its threads, live and exited), in seconds.
///
/// `None` when `/proc/<pid>/stat` cannot be read or parsed (the process is gone, or not Linux).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")))
}

/// User plus system CPU time of this process, in seconds (see [`process_cpu_seconds`]).
pub fn self_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(Path::new("/proc/self/stat"))
}

/// The kernel's clock ticks per second, the unit of `utime` and `stime`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the running kernel; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has reported 100 on every architecture for decades; a failed call falls back to it.
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn stat_cpu_seconds(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let ticks = parse_stat_cpu_ticks(&text)?;
    Some(ticks as f64 / clock_ticks_per_second() as f64)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
///
/// The command name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so the fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th and stime (15) the 13th.
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A CPU clock started at one instant: the seconds a process spent since.
#[derive(Debug, Clone, Copy)]
pub struct CpuSince {
    pid: Option<u32>,
    start_seconds: f64,
}

impl CpuSince {
    /// Starts counting for process `pid`, or this process when `None`; `None` when it cannot be read.
    pub fn start(pid: Option<u32>) -> Option<Self> {
        let start_seconds = match pid {
            Some(pid) => process_cpu_seconds(pid)?,
            None => self_cpu_seconds()?,
        };
        Some(CpuSince { pid, start_seconds })
    }

    /// CPU seconds spent since [`CpuSince::start`]; `None` when the process cannot be read any more.
    pub fn elapsed_seconds(&self) -> Option<f64> {
        let now = match self.pid {
            Some(pid) => process_cpu_seconds(pid)?,
            None => self_cpu_seconds()?,
        };
        Some(now - self.start_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line =
            "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
    }

    #[test]
    fn a_truncated_stat_line_is_none() {
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_cpu_time_grows_with_work() {
        let clock = CpuSince::start(None).expect("/proc/self/stat is readable on Linux");
        let mut x = 0u64;
        // Busy work until the kernel counts a tick (10 ms), bounded so a clock that never
        // moves fails the test instead of hanging it.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut spent = 0.0;
        while spent <= 0.0 && std::time::Instant::now() < give_up {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            spent = clock.elapsed_seconds().expect("still readable");
        }
        assert!(spent > 0.0, "30 s of busy work counted no CPU time");
    }
}
