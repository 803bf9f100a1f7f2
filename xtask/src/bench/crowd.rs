//! A host with many processes: the agent's memory at start-up grows with the processes it
//! finds (its process tree), so bench-cost fills the machine up to N processes with sleeping
//! `sleep 3600` children of its own, in one process group of their own, killed when dropped
//! (also when the bench fails), and by the kernel when the bench itself dies (interrupted).

use std::os::unix::process::CommandExt as _;

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use super::*;

/// How often the process count is topped up.
const TOP_UPS: u32 = 3;

/// Sleeping children that make up the difference to a process count.
pub(super) struct Crowd {
    children: Vec<Child>,
    /// The first child's pid: the group all of them are in.
    group: Option<Pid>,
    /// Processes on the machine once they were started.
    total: u64,
}

impl Crowd {
    /// Start enough sleepers that the machine has at least `processes` processes (every
    /// pid in `/proc`, kernel threads included, as `ps -e` counts them). Other processes
    /// come and go meanwhile: the count is topped up a few times.
    pub(super) fn fill_to(processes: u64) -> anyhow::Result<Self> {
        let present = process_count()?;
        let mut crowd = Crowd {
            children: Vec::new(),
            group: None,
            total: present,
        };
        for _ in 0..TOP_UPS {
            let missing = processes.saturating_sub(crowd.total);
            if missing == 0 {
                break;
            }
            for _ in 0..missing {
                crowd.add_sleeper()?;
            }
            crowd.total = process_count()?;
        }
        eprintln!(
            "processes: {present} on the machine, {} sleepers added: {}",
            crowd.children.len(),
            crowd.total
        );
        Ok(crowd)
    }

    fn add_sleeper(&mut self) -> anyhow::Result<()> {
        let mut sleep = Command::new("sleep");
        die_with_parent(&mut sleep, Signal::SIGKILL);
        let child = sleep
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(self.group.map_or(0, Pid::as_raw))
            .spawn()
            .context("starting a sleeping process")?;
        self.group.get_or_insert(Pid::from_raw(child.id() as i32));
        self.children.push(child);
        Ok(())
    }

    pub(super) fn started(&self) -> usize {
        self.children.len()
    }

    /// Processes on the machine once the sleepers were started.
    pub(super) fn total(&self) -> u64 {
        self.total
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = killpg(group, Signal::SIGKILL);
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Make the command's process get `signal` when the bench (the thread that starts it) dies,
/// whatever the way: a Ctrl-C does not reach a process group of its own.
pub(super) fn die_with_parent(command: &mut Command, signal: Signal) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is a single async-signal-safe system call.
    unsafe {
        command
            .pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// Processes on the machine: the numeric entries of `/proc`.
pub(super) fn process_count() -> anyhow::Result<u64> {
    let entries = fs::read_dir("/proc").context("listing /proc")?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| is_pid(&e.file_name().to_string_lossy()))
        .count() as u64)
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_entries_are_processes() {
        assert!(is_pid("1"));
        assert!(is_pid("4242"));
        assert!(!is_pid("self"));
        assert!(!is_pid("thread-self"));
        assert!(!is_pid(""));
        assert!(!is_pid("12a"));
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt as _;
        let starter = thread::spawn(|| {
            let mut sleep = Command::new("sleep");
            die_with_parent(&mut sleep, Signal::SIGKILL);
            sleep.arg("3600").spawn().unwrap()
        });
        let mut child = starter.join().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the sleeper outlived the thread that started it");
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    #[test]
    fn a_crowd_fills_up_in_one_group_and_goes_away() {
        let crowd = Crowd::fill_to(process_count().unwrap() + 20).unwrap();
        assert!(crowd.started() > 0, "no sleeper started");
        let group = crowd.group.expect("a group").as_raw();
        let pids: Vec<u32> = crowd.children.iter().map(Child::id).collect();
        for pid in &pids {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            assert_eq!(stat_sum(&stat, 5..=5), Some(group as u64), "{stat}");
        }
        drop(crowd);
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "sleeper {pid} still running"
            );
        }
    }
}
