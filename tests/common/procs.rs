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

/// A listener on `net`'s test host at `port` that accepts every connection and holds it open
/// (a C2 that never answers), started in `procs`; returns once it listens.
pub fn hold_connections(net: &super::netns::TestNet, port: u16, procs: &mut Procs) {
    use std::io::{BufRead, BufReader};
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen(64); print('ready', flush=True)\n\
         held = []\n\
         while True:\n    c, _ = s.accept(); held.append(c)\n"
    );
    let child = procs.spawn(
        Command::new("ip")
            .args(["netns", "exec", net.ns(), "/usr/bin/python3", "-c", &script])
            .stdout(std::process::Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the test host's listener did not start"
    );
}
