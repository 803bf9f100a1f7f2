//! The in-kernel connect guard, userspace side: attach `guard_connect4`/`guard_connect6` to the
//! cgroup v2 root and mirror every block into their maps, so `connect()` to a blocked address
//! fails at once with EPERM. The programs detach when the agent stops; nftables remains.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::{CgroupSockAddr, links::CgroupAttachMode},
};
use sentinel_common::guard::{GUARD4_USED, GUARD6_USED};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
}

pub struct ConnectGuard {
    v4: HashMap<MapData, u32, u64>,
    v6: HashMap<MapData, [u32; 4], u64>,
    /// `GUARD_USED`: the programs look an address up only once its map's flag is set.
    used: Array<MapData, u32>,
    /// The flags set in `used` so far (never cleared: a stale entry is harmless).
    used_flags: u32,
    root: PathBuf,
}

impl ConnectGuard {
    /// Load and attach both programs on the cgroup v2 root, next to whatever else is there.
    pub fn attach(ebpf: &mut Ebpf) -> Result<Self, GuardError> {
        let root = crate::sensors::cgroup::root().ok_or(GuardError::NoCgroup2)?;
        for program in ["guard_connect4", "guard_connect6"] {
            let cgroup = std::fs::File::open(&root).map_err(|source| GuardError::Cgroup {
                path: root.clone(),
                source,
            })?;
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(program)
                .ok_or(GuardError::MissingProgram(program))?
                .try_into()
                .map_err(|source| GuardError::Program { program, source })?;
            p.load()
                .map_err(|source| GuardError::Program { program, source })?;
            // A bpf_link on a cgroup always runs beside other programs; the kernel wants flags 0.
            p.attach(cgroup, CgroupAttachMode::Single)
                .map_err(|source| GuardError::Program { program, source })?;
        }
        Ok(Self {
            v4: take(ebpf, "GUARD4")?,
            v6: take(ebpf, "GUARD6")?,
            used: take(ebpf, "GUARD_USED")?,
            used_flags: 0,
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refuse connects to `ip` for `ttl`.
    pub fn insert(&mut self, ip: IpAddr, ttl: Duration) -> Result<(), aya::maps::MapError> {
        // The flag first: an address in a map the programs skip would not be refused.
        self.mark_used(match ip {
            IpAddr::V4(_) => GUARD4_USED,
            IpAddr::V6(_) => GUARD6_USED,
        })?;
        let expires = crate::sensors::boot_ns().saturating_add(ttl.as_nanos() as u64);
        match ip {
            IpAddr::V4(a) => self.v4.insert(u32::from_ne_bytes(a.octets()), expires, 0),
            IpAddr::V6(a) => self.v6.insert(key6(a.octets()), expires, 0),
        }
    }

    /// Set `flag` in `GUARD_USED` (once).
    fn mark_used(&mut self, flag: u32) -> Result<(), aya::maps::MapError> {
        if self.used_flags & flag == 0 {
            self.used.set(0, self.used_flags | flag, 0)?;
            self.used_flags |= flag;
        }
        Ok(())
    }

    /// Allow connects to `ip` again (no error if it was not there).
    pub fn remove(&mut self, ip: IpAddr) {
        let _ = match ip {
            IpAddr::V4(a) => self.v4.remove(&u32::from_ne_bytes(a.octets())),
            IpAddr::V6(a) => self.v6.remove(&key6(a.octets())),
        };
    }
}

/// `user_ip6` as the kernel lays it out: four words holding the address bytes in order.
fn key6(octets: [u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes(octets[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    [w(0), w(1), w(2), w(3)]
}

fn take<M>(ebpf: &mut Ebpf, map: &'static str) -> Result<M, GuardError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf.take_map(map).ok_or(GuardError::MissingMap(map))?;
    M::try_from(raw).map_err(|source| GuardError::Map { map, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_keys_keep_byte_order() {
        let a: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let k = key6(a.octets());
        let bytes: Vec<u8> = k.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, a.octets());
    }
}
