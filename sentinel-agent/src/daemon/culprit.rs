//! Who did it: the process an event is about as the detectors see it (`Culprit`: its start
//! time, executable, user, ancestry) and the container it runs in, from the process tree,
//! the container cache and, for what the tree does not hold, `/proc`.

use std::sync::{Arc, atomic::Ordering};

use super::pipeline::Pipeline;
use crate::{detect::Culprit, enrich::container::Container, enrich::tree::read_stat};

impl Pipeline {
    /// The process `tgid` as the detectors see it: its start time is the tree's (that of the
    /// event being handled), so a kill for it never hits a later process with its pid.
    pub(super) fn culprit(&mut self, tgid: u32, comm: String, uid: Option<u32>) -> Culprit {
        let ancestry = self.tree.ancestry(tgid, &self.proc_root);
        self.culprit_with(tgid, comm, uid, ancestry)
    }

    /// [`Self::culprit`] with `tgid`'s ancestry already walked.
    pub(super) fn culprit_with(
        &mut self,
        tgid: u32,
        comm: String,
        uid: Option<u32>,
        ancestry: Vec<(u32, Arc<str>)>,
    ) -> Culprit {
        let known = self.tree.get(tgid);
        let exe = known.and_then(|p| p.filename.clone());
        let start = known
            .map(|p| p.start)
            .or_else(|| read_stat(&self.proc_root, tgid).map(|s| s.start))
            .unwrap_or(0);
        let uid = uid.unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(self.proc_root.join(tgid.to_string())).map_or(u32::MAX, |m| m.uid())
        });
        // A container without a cgroup of its own (rootless Podman without cgroup v2
        // delegation) is named by its monitor among the ancestors.
        let container = self
            .container_of(tgid)
            .or_else(|| {
                let c = self.containers.of_monitored(tgid, &ancestry)?;
                let seen = self.containers.seen() as u64;
                self.shared.containers.store(seen, Ordering::Relaxed);
                Some(c)
            })
            .or_else(|| self.relay_container(tgid, &comm));
        Culprit {
            pid: tgid,
            start,
            comm,
            exe,
            uid,
            ancestry,
            container,
        }
    }

    /// The container `tgid` runs in: the tree's cgroup id (the kernel's, from its exec or its
    /// parent's), looked up once from `/proc` for a process the kernel never stamped, then the
    /// cache.
    pub(super) fn container_of(&mut self, tgid: u32) -> Option<Arc<Container>> {
        let mut cgroup_id = self.tree.get(tgid).map_or(0, |p| p.cgroup_id);
        if cgroup_id == 0 {
            cgroup_id = self.containers.cgroup_id_of(tgid);
            if cgroup_id == 0 {
                return None;
            }
            self.tree.set_cgroup(tgid, cgroup_id);
        }
        let before = self.containers.seen();
        let container = self.containers.of(cgroup_id, tgid);
        if self.containers.seen() != before {
            let seen = self.containers.seen() as u64;
            self.shared.containers.store(seen, Ordering::Relaxed);
        }
        container
    }

    /// The container whose network relay `tgid` is (a rootless container's `slirp4netns`):
    /// only a process of that name is examined, see `enrich::container::relay`.
    pub(super) fn relay_container(&mut self, tgid: u32, comm: &str) -> Option<Arc<Container>> {
        if comm != "slirp4netns" {
            return None;
        }
        let tree = &self.tree;
        self.containers.of_relay(tgid, || tree.pids_named("conmon"))
    }
}
