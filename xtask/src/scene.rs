//! What a benchmark that runs the real agent against a test host creates — its temp dir, its
//! nftables table, the agent process, the test host — removed on drop even when the run fails.

use std::{
    path::PathBuf,
    process::{Child, Command},
};

use crate::harness::netns;

pub struct Scene {
    pub dir: PathBuf,
    pub table: String,
    pub agent: Option<Child>,
    /// Held, not read: dropped after the agent is stopped (fields drop in declaration order
    /// after `drop`).
    pub _net: netns::TestNet,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill").arg(a.id().to_string()).status();
            let _ = a.wait();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
