//! Reading a config so that every problem shows at once. Serde stops at the first bad key, so
//! each key is tried on its own (a table holding only that key, nested as in the file): the
//! keys that fail are reported with the deserializer's reason and their line and column, the
//! rest are deserialized together and then go through the value checks (`validate.rs`).

use std::ops::Range;

use serde::Deserialize;
use toml::{
    Spanned,
    de::{DeTable, DeValue, Deserializer},
};

use super::{Config, Problem};

/// A key path (`["switch", "countdown"]`) with the span of its last key, and the path to
/// leave out of the file when the rest is read (an array of tables goes as a whole).
struct BadKey {
    path: Vec<String>,
    prune: Vec<String>,
    span: Range<usize>,
    reason: String,
}

/// Parse `text`: the config with defaults in place of the keys that failed (`None` when the
/// TOML itself is broken), and every problem found, each with its line and column.
pub(super) fn read(text: &str) -> (Option<Config>, Vec<Problem>) {
    let at = |offset: usize| line_column(text, offset);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let problems = syntax
            .iter()
            .map(|e| Problem {
                key: String::new(),
                reason: e.message().trim_end().to_string(),
                at: e.span().map(|s| at(s.start)),
            })
            .collect();
        return (None, problems);
    }
    let mut bad = Vec::new();
    find_bad_keys(root.get_ref(), &[], &mut bad);
    let mut problems: Vec<Problem> = bad
        .iter()
        .map(|b| Problem {
            key: b.path.join("."),
            reason: one_line(&b.reason),
            at: Some(at(b.span.start)),
        })
        .collect();
    // Keys that did not parse, in the order of the file; the value checks follow.
    problems.sort_by_key(|p| p.at);
    let bad_paths: Vec<&[String]> = bad.iter().map(|b| b.prune.as_slice()).collect();
    let rest = Spanned::new(root.span(), without(root.get_ref(), &[], &bad_paths));
    let config = match Config::deserialize(Deserializer::from(rest)) {
        Ok(config) => config,
        Err(e) => {
            // Each key parses alone but not together: name the file-wide reason.
            problems.push(Problem {
                key: String::new(),
                reason: one_line(e.message()),
                at: e.span().map(|s| at(s.start)),
            });
            return (None, problems);
        }
    };
    for mut problem in config.problems() {
        problem.at = key_span(root.get_ref(), &problem.key).map(|s| at(s.start));
        problems.push(problem);
    }
    (Some(config), problems)
}

/// Try each key of `table` (at `prefix`) alone; a failing table is searched for the keys
/// inside it that fail, and is itself reported only when none does.
fn find_bad_keys<'i>(
    table: &DeTable<'i>,
    prefix: &[&Spanned<DeString<'i>>],
    out: &mut Vec<BadKey>,
) {
    for (key, value) in table {
        let mut path = prefix.to_vec();
        path.push(key);
        let Err(e) = Config::deserialize(Deserializer::from(nest(&path, value.clone()))) else {
            continue;
        };
        let before = out.len();
        if let DeValue::Table(inner) = value.get_ref() {
            // A table the config has no place for (an unknown section) is bad itself.
            let empty = Spanned::new(value.span(), DeValue::Table(DeTable::new()));
            if Config::deserialize(Deserializer::from(nest(&path, empty))).is_ok() {
                find_bad_keys(inner, &path, out);
            }
        }
        if out.len() == before {
            let mut names: Vec<String> = path.iter().map(|k| k.get_ref().to_string()).collect();
            let prune = names.clone();
            let mut span = key.span();
            // In an array of tables (`[[lineage.allow]]`), name the key the error points at.
            if let (DeValue::Array(items), Some(at)) = (value.get_ref(), e.span())
                && let Some(inner) = items
                    .iter()
                    .find_map(|item| key_at(item.get_ref(), at.start))
            {
                names.push(inner.get_ref().to_string());
                span = inner.span();
            }
            out.push(BadKey {
                path: names,
                prune,
                span,
                reason: e.message().trim_end().to_string(),
            });
        }
    }
}

/// The key of `value` (a table) whose key or value covers byte `offset`.
fn key_at<'a, 'i>(value: &'a DeValue<'i>, offset: usize) -> Option<&'a Spanned<DeString<'i>>> {
    let DeValue::Table(table) = value else {
        return None;
    };
    table
        .iter()
        .find(|(k, v)| k.span().contains(&offset) || v.span().contains(&offset))
        .map(|(k, _)| k)
}

type DeString<'i> = std::borrow::Cow<'i, str>;

/// A document holding only `value` at `path`.
fn nest<'i>(path: &[&Spanned<DeString<'i>>], value: Spanned<DeValue<'i>>) -> Spanned<DeTable<'i>> {
    let mut value = value;
    for key in path.iter().rev() {
        let span = value.span();
        let mut table = DeTable::new();
        table.insert((*key).clone(), value);
        value = Spanned::new(span, DeValue::Table(table));
    }
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(table) => Spanned::new(span, table),
        _ => unreachable!("a path has at least one key"),
    }
}

/// `table` (at `prefix`) without the keys at `bad` paths.
fn without<'i>(table: &DeTable<'i>, prefix: &[String], bad: &[&[String]]) -> DeTable<'i> {
    let mut out = DeTable::new();
    for (key, value) in table {
        let mut path = prefix.to_vec();
        path.push(key.get_ref().to_string());
        if bad.contains(&path.as_slice()) {
            continue;
        }
        let value = match value.get_ref() {
            DeValue::Table(inner) if bad.iter().any(|b| b.starts_with(&path)) => {
                Spanned::new(value.span(), DeValue::Table(without(inner, &path, bad)))
            }
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    out
}

/// The span of the deepest key of `dotted` (`notify.slack.webhook_url`) found in the file.
fn key_span(table: &DeTable<'_>, dotted: &str) -> Option<Range<usize>> {
    let mut table = table;
    let mut found = None;
    for part in dotted.split('.') {
        let (key, value) = table.get_key_value(part)?;
        found = Some(key.span());
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

/// A reason on one line (some, like a regex error, come on several).
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(text: &str) -> Vec<String> {
        read(text).1.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[agent]\nring_buffer_kib = 3\n\n[switch]\ncountdown = \"soon\"\n\n[enforce]\nbogus_key = 1\ntable = \"bad table\"\n";
        let lines = report(text);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let find = |key: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{key}: ")))
                .unwrap_or_else(|| panic!("no {key} in {lines:#?}"))
                .clone()
        };
        let countdown = find("switch.countdown");
        assert!(
            countdown.contains("soon") && countdown.contains("line 5, column 1"),
            "{countdown}"
        );
        let bogus = find("enforce.bogus_key");
        assert!(
            bogus.contains("unknown field") && bogus.contains("line 8"),
            "{bogus}"
        );
        assert!(find("agent.ring_buffer_kib").contains("line 2"));
        assert!(find("enforce.table").contains("line 9"));
    }

    #[test]
    fn nested_sections_unknown_sections_and_wrong_types_are_named() {
        let lines = report(
            "[notify.slack]\nwebhok_url = \"x\"\n[nonsense]\na = 1\n[trust]\nips = [\"not-an-ip\"]\nssh_peers = \"yes\"\n",
        );
        for key in [
            "notify.slack.webhok_url",
            "nonsense",
            "trust.ips",
            "trust.ssh_peers",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(&format!("{key}: "))),
                "{key} missing from {lines:#?}"
            );
        }
        assert_eq!(lines.len(), 4, "{lines:#?}");
    }

    #[test]
    fn a_bad_array_of_tables_is_named_once_and_the_rest_still_read() {
        let text = "[switch]\ncountdown = \"1m\"\n[[lineage.allow]]\nparent = \"node\"\nchild = \"sh\"\nargv = \"(\"\n[agent]\nid = \"web1\"\n";
        let (config, problems) = read(text);
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("lineage.allow.argv: invalid regular expression")
                && lines[0].ends_with("(line 6, column 1)")
                && !lines[0].contains('\n'),
            "{lines:#?}"
        );
        let config = config.expect("the rest is read");
        assert_eq!(config.agent.id, "web1");
        assert_eq!(config.switch.countdown.as_secs(), 60);
    }

    #[test]
    fn broken_toml_names_line_and_column() {
        let lines = report("[agent]\nid = \n[switch\n");
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.starts_with("line ")), "{lines:#?}");
    }

    #[test]
    fn a_good_file_has_no_problems() {
        let (config, problems) = read("[switch]\ncountdown = \"30s\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.unwrap().switch.countdown.as_secs(), 30);
    }
}
