//! Which exec runs a package manager, for `lineage` (whose walk up the tree stops at one).
//! A name is only a claim: the program, or the script an interpreter runs, must be named in
//! `lineage.package_managers` *and* be the installed system's file (root-owned, in a system
//! directory, writable by nobody else: [`SystemFiles`]), and for a script so must the
//! interpreter. A comm, an argv or a copy in a web root proves nothing: `python3
//! /var/www/up/pip` is a python script somebody uploaded. The caller adds the last rule: a
//! process below a web server is never a package manager.
//!
//! `python3 -m pip` claims nothing: the module is looked up on `sys.path`, which the caller
//! controls (the working directory first, `PYTHONPATH`, user site-packages), so no file can
//! be checked for it. pip's installed entry points (`/usr/bin/pip`, `/usr/bin/pip3`) are
//! recognised; nothing else is lost, since the exemption matters only to a package manager
//! that would otherwise count as a web server.

use crate::enrich::installed::SystemFiles;

/// What an exec claims to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// The program itself (`/usr/bin/apt`, or a script started by its shebang,
    /// `/usr/bin/pip3`).
    Program(&'a str),
    /// An interpreter running a script: `node /usr/bin/npm`.
    Script {
        interpreter: &'a str,
        script: &'a str,
    },
}

/// The claim of an exec of `filename` with `argv`, when `is_name` says the program's name, or
/// the name of the script its interpreter runs (`argv[1]`), is a package manager's.
pub fn claim<'a>(
    filename: &'a str,
    argv: &'a [String],
    is_name: impl Fn(&str) -> bool,
) -> Option<Claim<'a>> {
    if is_name(stem(filename)) {
        return Some(Claim::Program(filename));
    }
    let script = argv.get(1).map(String::as_str)?;
    // An option (`-m pip`, `-c`, `--require x`) is not a script.
    (!script.starts_with('-') && is_name(stem(script))).then_some(Claim::Script {
        interpreter: filename,
        script,
    })
}

impl Claim<'_> {
    /// Whether every file the claim names is the installed system's.
    pub fn holds(&self, files: &SystemFiles) -> bool {
        match *self {
            Claim::Program(program) => files.is_installed(program),
            Claim::Script {
                interpreter,
                script,
            } => files.is_installed(interpreter) && files.is_installed(script),
        }
    }
}

/// A program's name as the lists spell it: the base name without a `.js`.
fn stem(path: &str) -> &str {
    let base = super::base_name(path);
    base.strip_suffix(".js").unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::installed::testing::{file, foreign, link, system};

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn is_pm(name: &str) -> bool {
        ["npm", "npm-cli", "pip", "pip3", "apt-get"].contains(&name)
    }

    #[test]
    fn claims_come_from_the_program_or_the_script_it_runs() {
        let a = argv("node /usr/bin/npm install");
        assert_eq!(
            claim("/usr/bin/node", &a, is_pm),
            Some(Claim::Script {
                interpreter: "/usr/bin/node",
                script: "/usr/bin/npm"
            })
        );
        let a = argv("apt-get update");
        assert_eq!(
            claim("/usr/bin/apt-get", &a, is_pm),
            Some(Claim::Program("/usr/bin/apt-get"))
        );
        let a = argv("node /usr/lib/node_modules/npm/bin/npm-cli.js ci");
        assert!(claim("/usr/bin/node", &a, is_pm).is_some());
        for a in [
            "python3 -m pip install x",
            "python3 -c pip",
            "node server.js",
        ] {
            assert_eq!(claim("/usr/bin/python3", &argv(a), is_pm), None, "{a}");
        }
    }

    /// A fake system: Debian's npm and node, pip3, and an upload in the web root.
    fn host(root: &std::path::Path) {
        file(root, "usr/share/nodejs/npm/bin/npm-cli.js", 0o755);
        link(root, "usr/bin/npm", "../share/nodejs/npm/bin/npm-cli.js");
        file(root, "usr/bin/node", 0o755);
        file(root, "usr/bin/python3", 0o755);
        file(root, "usr/bin/pip3", 0o755);
        file(root, "var/www/up/pip", 0o755);
        file(root, "tmp/node", 0o755);
    }

    fn holds(files: &SystemFiles, filename: &str, args: &str) -> bool {
        let a = argv(args);
        claim(filename, &a, is_pm).is_some_and(|c| c.holds(files))
    }

    #[test]
    fn installed_package_managers_hold_and_uploads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root);
        let sys = system(root);
        assert!(holds(&sys, "/usr/bin/node", "node /usr/bin/npm install"));
        assert!(holds(
            &sys,
            "/usr/bin/pip3",
            "/usr/bin/python3 /usr/bin/pip3 install x"
        ));
        // A script in the web root, and the real npm run by a node someone dropped in /tmp.
        assert!(!holds(
            &sys,
            "/usr/bin/python3",
            "python3 /var/www/up/pip install"
        ));
        assert!(!holds(&sys, "/tmp/node", "node /usr/bin/npm install"));
        // A relative script path depends on a working directory someone else chose.
        assert!(!holds(&sys, "/usr/bin/python3", "python3 pip install"));
        // `-m pip` claims nothing (see the module doc).
        assert!(!holds(&sys, "/usr/bin/python3", "python3 -m pip install x"));
    }

    #[test]
    fn an_upload_owned_by_the_web_user_is_no_package_manager() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root);
        let sys = foreign(root, "var/www/up/pip", 33);
        assert!(!holds(
            &sys,
            "/usr/bin/python3",
            "python3 /var/www/up/pip install"
        ));
        // Even in a system directory: www-data (uid 33) owns it.
        file(root, "usr/local/bin/pip", 0o755);
        let sys = foreign(root, "usr/local/bin/pip", 33);
        assert!(!holds(
            &sys,
            "/usr/bin/python3",
            "python3 /usr/local/bin/pip install"
        ));
        assert!(!holds(&sys, "/usr/local/bin/pip", "pip install"));
    }
}
