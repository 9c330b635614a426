//! The CPU time limit of this process's cgroup, as a CPU count: cgroup v2
//! `cpu.max`, or the cgroup v1 CFS quota (`cpu.cfs_quota_us` /
//! `cpu.cfs_period_us`). Docker `--cpus`, Kubernetes CPU limits and systemd
//! `CPUQuota=` all end up there, while `sched_getaffinity` still reports
//! every CPU of the machine.
//!
//! It owns finding and parsing those files; it must not decide the shard
//! count (that is `executor::plan_cpus`) and must not fail a start: a file
//! that is missing or unreadable means "no limit known".

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// Where the cgroup filesystems are mounted on every common distribution
/// and container runtime.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 mount points of the `cpu` controller (distributions differ).
const V1_CPU_DIRS: &[&str] = &["cpu", "cpu,cpuacct", "cpuacct,cpu"];

/// A CFS bandwidth limit: `quota_us` of CPU time per `period_us`, over all
/// of the cgroup's threads together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// Whole CPUs needed to use the quota, rounded up (1.5 CPUs -> 2), at
    /// least 1.
    pub(crate) fn cpus(self) -> usize {
        let n = self.quota_us.div_ceil(self.period_us).max(1);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The quota as a fraction of CPUs, for log lines.
    pub(crate) fn as_f64(self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    /// Compares the CPU time two quotas allow (quota/period, exactly).
    fn cmp_share(self, other: CpuQuota) -> Ordering {
        let a = u128::from(self.quota_us) * u128::from(other.period_us);
        let b = u128::from(other.quota_us) * u128::from(self.period_us);
        a.cmp(&b)
    }

    fn new(quota_us: u64, period_us: u64) -> Option<CpuQuota> {
        (quota_us > 0 && period_us > 0).then_some(CpuQuota {
            quota_us,
            period_us,
        })
    }
}

/// Parses cgroup v2 `cpu.max`: `"<quota> <period>"`, or `"max <period>"`
/// (and `"max"` alone) for no limit. Anything malformed reads as no limit.
pub(crate) fn parse_cpu_max(text: &str) -> Option<CpuQuota> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    if quota == "max" {
        return None;
    }
    let quota = quota.parse().ok()?;
    // The period may be omitted when written; the kernel always shows it,
    // and its default is 100 ms.
    let period = match fields.next() {
        Some(p) => p.parse().ok()?,
        None => 100_000,
    };
    CpuQuota::new(quota, period)
}

/// Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: a quota
/// of -1 means no limit.
pub(crate) fn parse_cfs(quota: &str, period: &str) -> Option<CpuQuota> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    CpuQuota::new(u64::try_from(quota).ok()?, period)
}

/// This process's cgroup paths from `/proc/self/cgroup`: the v2 (unified)
/// path (the `0::` line) and the v1 path of the `cpu` controller.
pub(crate) fn own_cgroups(proc_self_cgroup: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1_cpu = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1_cpu = Some(path.to_string());
        }
    }
    (v2, v1_cpu)
}

/// The tightest quota of the cgroup at `path` under `root` and of its
/// ancestors up to `root` (a parent's limit binds its children too), read
/// from each directory by `read`.
///
/// In a container with its own cgroup namespace the path is `/` and `root`
/// is the container's cgroup. Without one, `/proc/self/cgroup` names a
/// host path that is usually not mounted inside: then only `root` is read.
pub(crate) fn tightest_under(
    root: &Path,
    path: &str,
    read: impl Fn(&Path) -> Option<CpuQuota>,
) -> Option<CpuQuota> {
    let rel = path.trim_start_matches('/');
    let mut dir: PathBuf = root.join(rel);
    // `..` appears when the process sits outside its cgroup namespace's
    // root: nothing under `root` is its cgroup then.
    if rel.is_empty() || rel.split('/').any(|c| c == "..") || !dir.is_dir() {
        dir = root.to_path_buf();
    }
    let mut best: Option<CpuQuota> = None;
    loop {
        if let Some(q) = read(&dir) {
            best = match best {
                Some(b) if b.cmp_share(q) != Ordering::Greater => Some(b),
                _ => Some(q),
            };
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return best;
        }
    }
}

fn read_cpu_max(dir: &Path) -> Option<CpuQuota> {
    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
}

fn read_cfs(dir: &Path) -> Option<CpuQuota> {
    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
    parse_cfs(&quota, &period)
}

/// The CPU quota this process runs under, and the file kind it came from
/// (`"cgroup v2 cpu.max"` or `"cgroup v1 cpu.cfs_quota_us"`); `None` when
/// no quota is set or none can be read.
pub(crate) fn cpu_quota() -> Option<(CpuQuota, &'static str)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2, v1) = own_cgroups(&own);
    let root = Path::new(CGROUP_ROOT);
    if let Some(path) = v2 {
        if let Some(q) = tightest_under(root, &path, read_cpu_max) {
            return Some((q, "cgroup v2 cpu.max"));
        }
    }
    let path = v1?;
    V1_CPU_DIRS.iter().find_map(|d| {
        let mount = root.join(d);
        if !mount.is_dir() {
            return None;
        }
        tightest_under(&mount, &path, read_cfs).map(|q| (q, "cgroup v1 cpu.cfs_quota_us"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(quota_us: u64, period_us: u64) -> CpuQuota {
        CpuQuota {
            quota_us,
            period_us,
        }
    }

    #[test]
    fn cpu_max_parses_limits_and_no_limit() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("max"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(q(150_000, 100_000)));
        assert_eq!(parse_cpu_max("150000 100000").map(CpuQuota::cpus), Some(2));
        assert_eq!(parse_cpu_max("50000 100000").map(CpuQuota::cpus), Some(1));
        assert_eq!(parse_cpu_max("200000 100000").map(CpuQuota::cpus), Some(2));
        assert_eq!(parse_cpu_max("200001 100000").map(CpuQuota::cpus), Some(3));
        assert_eq!(parse_cpu_max("1 100000").map(CpuQuota::cpus), Some(1));
        assert_eq!(parse_cpu_max("400000").map(CpuQuota::cpus), Some(4));
        // Malformed or degenerate: no limit rather than a wrong one.
        for bad in [
            "",
            "\n",
            "abc 100000",
            "100000 abc",
            "0 100000",
            "100000 0",
            "-1 100000",
        ] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cfs_parses_v1_quota() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(
            parse_cfs("150000\n", "100000\n").map(CpuQuota::cpus),
            Some(2)
        );
        assert_eq!(parse_cfs("50000", "100000").map(CpuQuota::cpus), Some(1));
        assert_eq!(parse_cfs("300000", "100000").map(CpuQuota::cpus), Some(3));
        assert_eq!(parse_cfs("x", "100000"), None);
        assert_eq!(parse_cfs("100000", "0"), None);
    }

    #[test]
    fn proc_self_cgroup_gives_v2_and_v1_cpu_paths() {
        let v2 = "0::/system.slice/coordinator.service\n";
        assert_eq!(
            own_cgroups(v2),
            (Some("/system.slice/coordinator.service".into()), None)
        );
        let hybrid = "9:name=systemd:/\n4:memory:/m\n2:cpuacct:/a\n1:cpu:/docker/abc\n0::/\n";
        assert_eq!(
            own_cgroups(hybrid),
            (Some("/".into()), Some("/docker/abc".into()))
        );
        let v1 = "3:cpu,cpuacct:/kubepods/pod1/c1\n2:cpuset:/x\n";
        assert_eq!(own_cgroups(v1), (None, Some("/kubepods/pod1/c1".into())));
        assert_eq!(own_cgroups(""), (None, None));
    }

    #[test]
    fn the_tightest_limit_of_the_cgroup_and_its_ancestors_wins() {
        let root = std::env::temp_dir().join(format!(
            "coordinator-cgroup-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let leaf = root.join("system.slice/coordinator.service");
        std::fs::create_dir_all(&leaf).unwrap();
        let write = |dir: &Path, s: &str| std::fs::write(dir.join("cpu.max"), s).unwrap();
        write(&root, "max 100000\n");
        write(&root.join("system.slice"), "300000 100000\n");
        write(&leaf, "max 100000\n");
        let at = |p: &str| tightest_under(&root, p, read_cpu_max);
        // The slice's 3 CPUs bind the service below it.
        assert_eq!(
            at("/system.slice/coordinator.service"),
            Some(q(300_000, 100_000))
        );
        write(&leaf, "150000 100000\n");
        assert_eq!(
            at("/system.slice/coordinator.service").map(CpuQuota::cpus),
            Some(2)
        );
        // A path not mounted here (a host path seen from a container without
        // a cgroup namespace) reads the root only.
        assert_eq!(at("/docker/elsewhere"), None);
        write(&root, "50000 100000\n");
        assert_eq!(at("/docker/elsewhere").map(CpuQuota::cpus), Some(1));
        assert_eq!(at("/").map(CpuQuota::cpus), Some(1));
        assert_eq!(at("/../..").map(CpuQuota::cpus), Some(1));
        let _ = std::fs::remove_dir_all(&root);
    }
}
