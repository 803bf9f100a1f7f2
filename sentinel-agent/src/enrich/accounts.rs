//! Who is who among the host's accounts, from the text of `/etc/passwd` and `/etc/group`:
//! which names a list of users and `%groups` stands for (`trust.ssh_users`), and who the
//! administrators are (root and the sudo, admin and wheel groups), whose SSH sessions are
//! trusted (`enrich::ssh`) and whose recent login addresses are never blocked
//! (`enforce::logins`). Read afresh by each caller, so a user added to `sudo` counts at once.

use std::{collections::HashSet, fs, path::Path};

/// The administrators: root and the members of the groups that may use sudo.
pub const ADMINS: [&str; 4] = ["root", "%sudo", "%admin", "%wheel"];

/// The user names `spec` stands for: each `name`, and each `%group`'s members and the users
/// whose primary group it is, then every other name of the same uids (`toor` is root too).
/// Names the files do not list are kept as written.
pub fn resolve<S: AsRef<str>>(spec: &[S], passwd: &str, group: &str) -> HashSet<String> {
    let mut names: HashSet<String> = HashSet::new();
    let mut gids = HashSet::new();
    for entry in spec.iter().map(AsRef::as_ref) {
        match entry.strip_prefix('%') {
            Some(wanted) => {
                for line in group.lines() {
                    if let [name, _, gid, members] = fields(line)[..]
                        && name == wanted
                    {
                        gids.insert(gid);
                        names.extend(
                            members
                                .split(',')
                                .filter(|m| !m.is_empty())
                                .map(String::from),
                        );
                    }
                }
            }
            None => {
                names.insert(entry.to_string());
            }
        }
    }
    let users: Vec<Vec<&str>> = passwd.lines().map(fields).collect();
    let mut uids = HashSet::new();
    for f in &users {
        if let [name, _, uid, gid, ..] = f[..]
            && (names.contains(name) || gids.contains(gid))
        {
            uids.insert(uid);
        }
    }
    for f in &users {
        if let [name, _, uid, ..] = f[..]
            && uids.contains(uid)
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// root, every user with uid 0, and the members of the sudo, admin and wheel groups (listed in
/// `group`, or by primary group in `passwd`).
pub fn admins(passwd: &str, group: &str) -> HashSet<String> {
    resolve(&ADMINS, passwd, group)
}

/// The uid of user `name` in `passwd`.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| match fields(line)[..] {
        [n, _, uid, ..] if n == name => uid.parse().ok(),
        _ => None,
    })
}

/// `<etc>/passwd` and `<etc>/group` (empty when unreadable).
pub fn read(etc: &Path) -> (String, String) {
    let read = |name: &str| fs::read_to_string(etc.join(name)).unwrap_or_default();
    (read("passwd"), read("group"))
}

fn fields(line: &str) -> Vec<&str> {
    line.split(':').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/bash\ntoor:x:0:0::/:/bin/sh\n\
                          ops:x:1001:27::/home/ops:/bin/bash\nweb:x:33:33::/var/www:/bin/false\n\
                          alice:x:1000:1000::/home/alice:/bin/bash\n\
                          deploy:x:1002:1002::/home/deploy:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:alice,bob\nwheel:x:10:\nwww-data:x:33:web\n\
                         deployers:x:1500:deploy\n";

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_admin_set_is_root_and_the_admin_groups() {
        assert_eq!(
            admins(PASSWD, GROUP),
            set(&["root", "toor", "ops", "alice", "bob"])
        );
        // Nothing readable: root, by name.
        assert_eq!(admins("", ""), set(&["root"]));
    }

    #[test]
    fn names_and_groups_resolve() {
        assert_eq!(
            resolve(&["deploy", "%www-data"], PASSWD, GROUP),
            set(&["deploy", "web"])
        );
        assert_eq!(resolve(&["%deployers"], PASSWD, GROUP), set(&["deploy"]));
        assert_eq!(
            resolve(&["%nosuch", "ghost"], PASSWD, GROUP),
            set(&["ghost"])
        );
        assert!(resolve::<&str>(&[], PASSWD, GROUP).is_empty());
    }

    #[test]
    fn uids_are_looked_up_by_name() {
        assert_eq!(uid_of(PASSWD, "toor"), Some(0));
        assert_eq!(uid_of(PASSWD, "alice"), Some(1000));
        assert_eq!(uid_of(PASSWD, "ali"), None);
        assert_eq!(uid_of("garbage", "garbage"), None);
    }
}
