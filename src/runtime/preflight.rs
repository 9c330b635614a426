//! Start-up checks that turn io_uring and memlock problems into messages
//! that name the fix, instead of a panic deep inside an executor.

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "RLIMIT_MEMLOCK is {have_kib} KiB; glommio needs at least {need_kib} KiB. \
         Raise it: systemd `LimitMEMLOCK=infinity` (see deploy/coordinator.service), \
         docker `--ulimit memlock=-1:-1`, or `ulimit -l unlimited` in the shell"
    )]
    Memlock { have_kib: u64, need_kib: u64 },
    #[error(
        "io_uring is not permitted here ({0}). In Docker, run with the shipped seccomp \
         profile (`--security-opt seccomp=deploy/seccomp-io_uring.json`) or \
         `--security-opt seccomp=unconfined`; on the host check \
         `sysctl kernel.io_uring_disabled` (must be 0)"
    )]
    IoUringDenied(String),
    #[error("io_uring is not available: the kernel is too old (need Linux >= 5.8) ({0})")]
    IoUringMissing(String),
}

/// glommio refuses to start below this (see its executor start-up check).
const NEED_MEMLOCK: u64 = 512 << 10;

/// Checks RLIMIT_MEMLOCK and that an io_uring can be created.
pub(crate) fn preflight() -> Result<(), PreflightError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < NEED_MEMLOCK {
        return Err(PreflightError::Memlock {
            have_kib: lim.rlim_cur / 1024,
            need_kib: NEED_MEMLOCK / 1024,
        });
    }
    probe_io_uring()
}

fn probe_io_uring() -> Result<(), PreflightError> {
    // io_uring_params is 120 bytes; zeroed means "defaults".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params*) only writes into `params`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4u32,
            params.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if fd >= 0 {
        // SAFETY: we own the fd just returned.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) => Err(PreflightError::IoUringMissing(err.to_string())),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            Err(PreflightError::IoUringDenied(err.to_string()))
        }
        _ => Err(PreflightError::IoUringDenied(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn preflight_passes_on_this_machine() {
        // CI and dev machines are required to run glommio; if this fails the
        // message itself says what to change.
        if let Err(e) = super::preflight() {
            panic!("{e}");
        }
    }
}
