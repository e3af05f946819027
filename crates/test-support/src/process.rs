//! A child `anyedge` process, stopped by its pid when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Start `bin` with `args`; stderr goes to `log` so a failing test can show it.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> Proc {
        Self::spawn_with_nofile(bin, args, log, None)
    }

    /// Like `spawn`, with `RLIMIT_NOFILE` lowered to `nofile` in the child (descriptor
    /// exhaustion tests).
    pub fn spawn_with_nofile(bin: &Path, args: &[&str], log: &Path, nofile: Option<u64>) -> Proc {
        use std::os::unix::process::CommandExt;
        let log_file = std::fs::File::create(log).expect("log file");
        let mut command = Command::new(bin);
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .args(args)
            .env("ANYEDGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn anyedge");
        Proc { child }
    }

    /// `anyedge run --config CONFIG --admin-listen ADMIN`, logging to `log`.
    pub fn anyedge_run(
        bin: &Path,
        config: &Path,
        admin: std::net::SocketAddr,
        log: &Path,
        nofile: Option<u64>,
    ) -> Proc {
        let config = config.to_str().expect("utf-8 config path");
        let admin = admin.to_string();
        Self::spawn_with_nofile(
            bin,
            &["run", "--config", config, "--admin-listen", &admin],
            log,
            nofile,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Exited already? Returns the exit code if so.
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
