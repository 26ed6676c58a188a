//! How much of the machine a measured window really had: other processes and the hypervisor
//! share these cores, so a step time means little without them. Read from Linux's `/proc`
//! (the same counters as `../shared/bench/torch_pangu_cpu.py`, the PyTorch baseline):
//!
//! - `cpu_wait`: the seconds this process's threads were runnable but waited for a CPU
//!   (`run_delay`, the second field of `/proc/self/task/*/schedstat`), over wall × cores. It
//!   includes the waits the executor's own ranks cause each other when they outnumber cores.
//! - `steal`: the share of the machine's CPU time the hypervisor gave to other guests
//!   (the `steal` column of `/proc/stat`).
//! - `other`: the share used by other processes of this machine (busy time from `/proc/stat`
//!   minus this process's user and system time from `/proc/self/stat`).
//!
//! Where a counter cannot be read (not Linux, no `CONFIG_SCHED_INFO`) it reads as zero and
//! [`Sample::available`] says so.

use std::time::Instant;

use serde::Serialize;

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    run_delay_ns: u64,
    /// Machine ticks: (busy excluding steal, steal, total).
    busy: u64,
    steal: u64,
    total: u64,
    /// This process's user + system ticks.
    own: u64,
    /// Whether `/proc` answered.
    pub available: bool,
}

/// What a window between two samples had of the machine.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Window {
    /// Wall seconds.
    pub wall_s: f64,
    /// This process's threads' waits for a CPU, over wall × cores.
    pub cpu_wait: f64,
    /// Share of the machine's CPU time stolen by the hypervisor.
    pub steal: f64,
    /// Share of the machine's CPU time used by other processes.
    pub other: f64,
}

impl Window {
    /// The share of the machine other work took (hypervisor and other processes).
    pub fn interference(&self) -> f64 {
        self.steal + self.other
    }
}

fn run_delay_ns() -> Option<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let p = e.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            if let Some(v) = s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += v;
            }
        }
    }
    Some(total)
}

/// (busy without steal, steal, total) ticks of all CPUs.
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    let steal = v[7];
    Some((total - idle - steal, steal, total))
}

/// This process's user + system ticks (fields 14 and 15 of `/proc/self/stat`).
fn own_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads the counters now.
pub fn sample() -> Sample {
    let at = Instant::now();
    let rd = run_delay_ns();
    let m = machine_ticks();
    let own = own_ticks();
    let (busy, steal, total) = m.unwrap_or((0, 0, 0));
    Sample {
        at,
        run_delay_ns: rd.unwrap_or(0),
        busy,
        steal,
        total,
        own: own.unwrap_or(0),
        available: rd.is_some() && m.is_some() && own.is_some(),
    }
}

/// The machine's logical CPUs.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The window from `a` to `b`.
pub fn window(a: &Sample, b: &Sample) -> Window {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let cores = cores() as f64;
    let total = b.total.saturating_sub(a.total) as f64;
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let own = b.own.saturating_sub(a.own) as f64;
    let share = |x: f64| {
        if total > 0.0 {
            (x / total).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    Window {
        wall_s: wall,
        cpu_wait: if wall > 0.0 {
            b.run_delay_ns.saturating_sub(a.run_delay_ns) as f64 * 1e-9 / (wall * cores)
        } else {
            0.0
        },
        steal: share(b.steal.saturating_sub(a.steal) as f64),
        other: share((busy - own).max(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_window_reads_its_own_work_not_others() {
        let a = sample();
        if !a.available {
            return; // not Linux: nothing to read
        }
        // Keep one thread busy for ~300 ms (3 ticks of 100 Hz at least).
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = sample();
        let w = window(&a, &b);
        assert!(w.wall_s >= 0.3);
        for v in [w.steal, w.other] {
            assert!((0.0..=1.0).contains(&v), "{w:?}");
        }
        // Time this process's threads waited for a core, per core: above 1 when more of its
        // threads are runnable than there are cores (a loaded test run), never negative.
        assert!(w.cpu_wait.is_finite() && w.cpu_wait >= 0.0, "{w:?}");
        // The busy thread is this process's: it is not counted as another's.
        assert!(w.other < 0.9, "{w:?}");
    }
}
