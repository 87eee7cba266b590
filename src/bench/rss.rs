//! Peak resident memory as the OS reports it (Linux `/proc/self/status`).

/// Resets the kernel's peak-RSS mark for this process; returns false where the OS does not allow it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size since start or the last [`reset_peak`], in bytes.
pub fn peak_bytes() -> u64 {
    status_field("VmHWM:")
}

/// Resident set size now, in bytes.
pub fn current_bytes() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    proc_kib_field("/proc/self/status", name).map_or(0, |kib| kib * 1024)
}

/// A `Name:   123 kB` field of a `/proc` file, in KiB.
pub fn proc_kib_field(path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
}

/// Bytes a directory tree takes on disk (allocated blocks, not apparent length).
pub fn disk_usage_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| disk_usage_bytes(&e.path()))
        .sum()
}
