//! The agent's own nftables table in a test: a unique name, inspected through `nft -j`, and
//! deleted on drop even when the test fails (tests never touch any other table).

use std::process::Command;

use serde_json::Value;

/// The agent's table for one test, deleted on drop.
pub struct Table(pub String);

impl Table {
    pub fn new(tag: &str) -> Table {
        let t = Table(format!("snt_{tag}_{}", std::process::id()));
        t.delete();
        t
    }

    pub fn delete(&self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output();
    }

    pub fn exists(&self) -> bool {
        Command::new("nft")
            .args(["list", "table", "inet", &self.0])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Elements of `set` with their timeout (seconds), from `nft -j`.
    pub fn elements(&self, set: &str) -> Vec<(String, Option<u64>)> {
        let out = Command::new("nft")
            .args(["-j", "list", "set", "inet", &self.0, set])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut els = Vec::new();
        for item in v["nftables"].as_array().unwrap() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                let (val, timeout) = match e.get("elem") {
                    Some(x) => (x["val"].as_str(), x["timeout"].as_u64()),
                    None => (e.as_str(), None),
                };
                els.push((val.unwrap().to_string(), timeout));
            }
        }
        els
    }

    pub fn delete_element(&self, set: &str, addr: &str) {
        let out = Command::new("nft")
            .args([
                "delete",
                "element",
                "inet",
                &self.0,
                set,
                &format!("{{ {addr} }}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.delete();
    }
}
