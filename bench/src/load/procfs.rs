//! Reads a process's CPU time and resident memory from Linux `/proc`.
//!
//! Used to measure the server under load (`--server-pid`), the bench
//! itself, and room-node's `grpc_hop` benchmark. CPU time is `utime +
//! stime` from `/proc/PID/stat` (with `stime`, the kernel's share, also
//! kept on its own), in clock ticks
//! converted with `USER_HZ` = 100, the value Linux exposes to user space on
//! x86 and arm64 whatever the kernel's internal HZ. RSS is `VmRSS` from
//! `/proc/PID/status`. On other systems every read fails with an I/O error,
//! which the caller reports.

use std::io;

/// Clock ticks per second of `/proc/PID/stat` times (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// System (kernel) CPU time alone, in seconds.
    pub system_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads the counters of process `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| malformed("stat", pid))?;
    let rss_bytes = parse_rss_bytes(&status).ok_or_else(|| malformed("status", pid))?;
    Ok(ProcSample {
        cpu_seconds: (ticks.user + ticks.system) as f64 / USER_HZ,
        system_seconds: ticks.system as f64 / USER_HZ,
        rss_bytes,
    })
}

/// The soft limit on open files of this process, if readable.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn malformed(file: &str, pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected format of /proc/{pid}/{file}"),
    )
}

/// A process's CPU time in clock ticks.
#[derive(Debug, PartialEq)]
struct CpuTicks {
    user: u64,
    system: u64,
}

/// `utime` and `stime` (fields 14 and 15). The command name (field 2) is in
/// parentheses and may itself contain spaces and `)`, so fields are counted
/// from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // after the name: field 3 (state) is index 0, so field N is index N - 3
    let user: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// `VmRSS:   1234 kB` → bytes.
fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// The "Max open files" soft limit ("unlimited" → `u64::MAX`).
fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "8975 (my (odd) cmd) R 8930 8930 2324 0 -1 4194304 100 0 0 0 \
                    250 75 0 0 20 0 1 0 67690 3133440 390 18446744073709551615";
        assert_eq!(
            parse_cpu_ticks(stat),
            Some(CpuTicks {
                user: 250,
                system: 75
            })
        );
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) R 1 2"), None);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tcat\nVmPeak:\t 9999 kB\nVmRSS:\t    2152 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_bytes(status), Some(2152 * 1024));
        assert_eq!(
            parse_rss_bytes("Name:\tkthreadd\n"),
            None,
            "kernel threads have no VmRSS"
        );
    }

    #[test]
    fn parses_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Some(u64::MAX));
    }

    #[test]
    fn samples_our_own_process() {
        let pid = std::process::id();
        let before = sample(pid).expect("/proc is readable on linux");
        assert!(
            before.rss_bytes > 1024 * 1024,
            "a test binary uses more than 1 MiB"
        );
        // burn a little CPU so the counter can only grow
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = sample(pid).unwrap();
        assert!(after.cpu_seconds >= before.cpu_seconds);
        assert!(after.system_seconds <= after.cpu_seconds);
        assert!(open_files_limit().is_some_and(|limit| limit > 0));
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(sample(u32::MAX).is_err());
    }
}
