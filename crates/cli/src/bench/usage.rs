//! CPU time and memory of the bench itself and of the broker under test (`--broker-pid`),
//! read from `/proc` (Linux; elsewhere the figures are absent).
//!
//! CPU times in `/proc/PID/stat` are in clock ticks of `USER_HZ`, which Linux fixes at 100
//! for user space on every architecture we run on (`getconf CLK_TCK` prints 100); we assume
//! it rather than calling `sysconf`, which would need `libc` and `unsafe`.

use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of the CPU times in `/proc/PID/stat` (`getconf CLK_TCK`).
const CLK_TCK: f64 = 100.0;

/// Above this share of its worker threads' time the bench itself may be the bottleneck.
const SATURATED: f64 = 0.90;

/// User + system CPU seconds of process `pid` (`None`: this process), if readable.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_cpu(&stat)
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted after the last `)`: state is
/// field 3, utime field 14, stime field 15.
fn parse_cpu(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the peak resident size over the process's life.
    pub peak_kb: u64,
}

/// Memory of process `pid`, if readable.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_memory(&status)
}

fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(':')?;
            v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kb: field("VmRSS")?,
        peak_kb: field("VmHWM")?,
    })
}

/// Checks that `--broker-pid` names a process whose figures we can read.
pub fn check_pid(pid: u32) -> Result<(), String> {
    match (cpu_seconds(Some(pid)), memory(pid)) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(format!(
            "--broker-pid {pid}: cannot read /proc/{pid}/stat and /proc/{pid}/status \
             (no such process, or not Linux)"
        )),
    }
}

/// CPU and memory over the measured part of a run (flattened into the JSON summary).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Wall-clock seconds over which the CPU times below were taken.
    pub measured_s: f64,
    /// Worker threads of the bench's runtime.
    pub bench_threads: usize,
    /// CPU seconds (user + system) the bench used (null where /proc is missing).
    pub bench_cpu_s: Option<f64>,
    /// The bench's CPU time as a percentage of one core (200 = two cores busy).
    pub bench_cpu_pct: Option<f64>,
    /// True if the bench used more than 90% of its worker threads: it may be the limit.
    pub bench_saturated: bool,
    /// Process id of the broker (`--broker-pid`).
    pub broker_pid: Option<u32>,
    /// CPU seconds (user + system) the broker used.
    pub broker_cpu_s: Option<f64>,
    /// The broker's CPU time as a percentage of one core.
    pub broker_cpu_pct: Option<f64>,
    /// The broker's resident memory at the end (VmRSS), KiB.
    pub broker_rss_kb: Option<u64>,
    /// The broker's peak resident memory over its life (VmHWM), KiB.
    pub broker_peak_rss_kb: Option<u64>,
}

impl Usage {
    /// The warning to print when the bench saturated its threads.
    pub fn warning(&self) -> Option<String> {
        let cpu = self.bench_cpu_s.filter(|_| self.bench_saturated)?;
        let share = 100.0 * cpu / (self.measured_s * self.bench_threads as f64);
        Some(format!(
            "warning: the bench used {share:.0}% of its {} worker threads; it may be the \
             bottleneck, not the broker (try --threads, or another machine)",
            self.bench_threads
        ))
    }
}

/// CPU times taken at the start of the measured part of a run.
#[derive(Debug, Clone)]
pub struct Probe {
    at: Instant,
    broker_pid: Option<u32>,
    bench_cpu: Option<f64>,
    broker_cpu: Option<f64>,
}

impl Probe {
    /// Starts measuring now.
    pub fn start(broker_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            broker_pid,
            bench_cpu: cpu_seconds(None),
            broker_cpu: broker_pid.and_then(|p| cpu_seconds(Some(p))),
        }
    }

    /// The broker's memory now (`None` without `--broker-pid`).
    pub fn broker_memory(&self) -> Option<Memory> {
        self.broker_pid.and_then(memory)
    }

    /// Usage from the start until now.
    pub fn finish(&self) -> Usage {
        let secs = self.at.elapsed().as_secs_f64();
        let threads = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1)
            .max(1);
        let delta = |before: Option<f64>, now: Option<f64>| Some((now? - before?).max(0.0));
        let pct = |cpu: Option<f64>| cpu.filter(|_| secs > 0.0).map(|c| 100.0 * c / secs);
        let bench_cpu_s = delta(self.bench_cpu, cpu_seconds(None));
        let broker_cpu_s = delta(
            self.broker_cpu,
            self.broker_pid.and_then(|p| cpu_seconds(Some(p))),
        );
        let mem = self.broker_memory();
        Usage {
            measured_s: secs,
            bench_threads: threads,
            bench_cpu_s,
            bench_cpu_pct: pct(bench_cpu_s),
            bench_saturated: bench_cpu_s
                .is_some_and(|c| secs > 0.0 && c > SATURATED * secs * threads as f64),
            broker_pid: self.broker_pid,
            broker_cpu_s,
            broker_cpu_pct: pct(broker_cpu_s),
            broker_rss_kb: mem.map(|m| m.rss_kb),
            broker_peak_rss_kb: mem.map(|m| m.peak_kb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "4242 (my (odd) broker) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu(stat), Some(3.25));
        assert_eq!(parse_cpu("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tsagitta\nVmPeak:\t  99999 kB\nVmHWM:\t    5120 kB\n\
                      VmRSS:\t    4096 kB\nThreads:\t3\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kb: 4096,
                peak_kb: 5120
            })
        );
        assert_eq!(parse_memory("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_measurable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds(None).is_some_and(|c| c >= 0.0));
            let me = std::process::id();
            assert!(memory(me).is_some_and(|m| m.rss_kb > 0 && m.peak_kb >= m.rss_kb));
            assert!(check_pid(me).is_ok());
        }
        assert!(check_pid(u32::MAX).is_err());
    }
}
