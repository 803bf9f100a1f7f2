//! Processes a test started, each leading its own process group: the groups (the processes
//! and whatever they started) are SIGKILLed and reaped on drop, even when the test fails.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command},
};

#[derive(Default)]
pub struct Procs(Vec<Child>);

impl Procs {
    /// Start `cmd` leading a process group of its own.
    pub fn spawn(&mut self, cmd: &mut Command) -> &mut Child {
        let child = cmd.process_group(0).spawn().expect("spawn");
        self.0.push(child);
        self.0.last_mut().unwrap()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }
}
