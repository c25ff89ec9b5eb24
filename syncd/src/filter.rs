//! Include/exclude rules with rsync's meaning, and their wire form.
//!
//! A [`Filter`] is an ordered list of rules; for each path the first rule that matches
//! decides (rsync's "first match wins"), and a path no rule matches is included. Patterns
//! are rsync's:
//! - a pattern without a `/` (a trailing one aside) matches the last component anywhere in
//!   the tree (`*.tmp`, `cache`);
//! - a pattern with a `/` inside is matched against the end of the path (`app/local.conf`
//!   matches `srv/app/local.conf`); a leading `/` anchors it at the tree root (`/var/run`);
//! - a trailing `/` matches directories only (`cache/`);
//! - `*` and `?` do not cross a `/`, `**` does, `[...]` is a class.
//!
//! An excluded directory is not descended into, so nothing below it is included (as in
//! rsync). The same filter runs on both sides of a push: an excluded path is neither sent
//! nor deleted at the destination, unless the push says `--delete-excluded`.
//!
//! Sans-IO: rules come in as strings (the binary reads `--exclude-from` files), paths as
//! bytes relative to the tree root.

use globset::{GlobBuilder, GlobMatcher};

/// Whether a rule includes or excludes what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `--include`: keep it (and stop looking at later rules).
    Include,
    /// `--exclude`: leave it out.
    Exclude,
}

/// One rule as given, before it is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Include or exclude.
    pub action: Action,
    /// The pattern, as the user wrote it.
    pub pattern: String,
}

/// A pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {message}")]
pub struct FilterError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Compiled {
    action: Action,
    dir_only: bool,
    glob: GlobMatcher,
}

/// Compiled rules, first match wins.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<Rule>,
    compiled: Vec<Compiled>,
}

impl Filter {
    /// Compiles `rules` in order.
    pub fn new(rules: Vec<Rule>) -> Result<Filter, FilterError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for r in &rules {
            compiled.push(compile(r)?);
        }
        Ok(Filter { rules, compiled })
    }

    /// True if there are no rules (everything is included).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, as given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether the entry at `path` (relative, `/`-separated, not empty) is excluded;
    /// `is_dir` says whether it is a directory.
    pub fn excludes(&self, path: &[u8], is_dir: bool) -> bool {
        let p = match std::str::from_utf8(path) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            // globset matches text; a non-UTF-8 byte never matches a literal, and `*` and
            // `?` match it as U+FFFD.
            Err(_) => String::from_utf8_lossy(path),
        };
        for c in &self.compiled {
            if c.dir_only && !is_dir {
                continue;
            }
            if c.glob.is_match(p.as_ref()) {
                return c.action == Action::Exclude;
            }
        }
        false
    }

    /// The wire form: one line per rule, `+ PATTERN` or `- PATTERN` (rsync's short rule
    /// syntax). Patterns cannot contain a newline ([`Filter::new`] refuses them).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in &self.rules {
            out.extend_from_slice(match r.action {
                Action::Include => b"+ ",
                Action::Exclude => b"- ",
            });
            out.extend_from_slice(r.pattern.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Parses [`Filter::encode`]'s form.
    pub fn decode(bytes: &[u8]) -> Result<Filter, FilterError> {
        let text = std::str::from_utf8(bytes).map_err(|_| FilterError {
            pattern: String::from_utf8_lossy(bytes).into_owned(),
            message: "rules are not UTF-8".into(),
        })?;
        let mut rules = Vec::new();
        for line in text.split_terminator('\n') {
            let (action, pattern) = match line.split_at_checked(2) {
                Some(("+ ", p)) => (Action::Include, p),
                Some(("- ", p)) => (Action::Exclude, p),
                _ => {
                    return Err(FilterError {
                        pattern: line.into(),
                        message: "a rule starts with \"+ \" or \"- \"".into(),
                    });
                }
            };
            rules.push(Rule {
                action,
                pattern: pattern.into(),
            });
        }
        Filter::new(rules)
    }
}

/// Reads the lines of an `--exclude-from`/`--include-from` file: blank lines and lines
/// starting with `#` or `;` are skipped, as rsync does.
pub fn rule_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

/// The rules that make a `--files-from` list: each listed path, its ancestors (as
/// directories) and, for a directory, everything below it are included; everything else
/// is excluded.
pub fn files_from_rules(paths: &[String]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let include = |p: String| Rule {
        action: Action::Include,
        pattern: p,
    };
    for p in paths {
        let p = p.trim_start_matches("./").trim_start_matches('/');
        let p = p.trim_end_matches('/');
        if p.is_empty() {
            continue;
        }
        let escaped = escape(p);
        let mut at = 0;
        while let Some(i) = escaped[at..].find('/') {
            rules.push(include(format!("/{}/", &escaped[..at + i])));
            at += i + 1;
        }
        rules.push(include(format!("/{escaped}")));
        rules.push(include(format!("/{escaped}/**")));
    }
    rules.push(Rule {
        action: Action::Exclude,
        pattern: "*".into(),
    });
    rules
}

/// `s` with glob metacharacters escaped, so that it matches itself only.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn compile(r: &Rule) -> Result<Compiled, FilterError> {
    let bad = |message: String| FilterError {
        pattern: r.pattern.clone(),
        message,
    };
    if r.pattern.contains('\n') || r.pattern.contains('\0') {
        return Err(bad("a pattern cannot contain a newline or NUL".into()));
    }
    let mut p = r.pattern.as_str();
    let dir_only = p.len() > 1 && p.ends_with('/');
    if dir_only {
        p = &p[..p.len() - 1];
    }
    if p.is_empty() {
        return Err(bad("empty pattern".into()));
    }
    // Anchored at the root, or matched against the end of the path: the last component
    // for a pattern without `/`, the last components for one with.
    let glob = match p.strip_prefix('/') {
        Some(anchored) => anchored.to_string(),
        None => format!("{{{p},**/{p}}}"),
    };
    let glob = GlobBuilder::new(&glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| bad(e.kind().to_string()))?;
    Ok(Compiled {
        action: r.action,
        dir_only,
        glob: glob.compile_matcher(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(a: Action, p: &str) -> Rule {
        Rule {
            action: a,
            pattern: p.into(),
        }
    }

    fn ex(p: &str) -> Rule {
        rule(Action::Exclude, p)
    }

    fn inc(p: &str) -> Rule {
        rule(Action::Include, p)
    }

    #[test]
    fn rsync_pattern_meanings() {
        // (rules, path, is_dir, excluded)
        let cases: &[(&[Rule], &str, bool, bool)] = &[
            (&[ex("*.tmp")], "a.tmp", false, true),
            (&[ex("*.tmp")], "app/local.tmp", false, true),
            (&[ex("*.tmp")], "app/local.tmpx", false, false),
            (&[ex("cache/")], "x/cache", true, true),
            (&[ex("cache/")], "x/cache", false, false),
            (&[ex("/run")], "run", true, true),
            (&[ex("/run")], "var/run", true, false),
            (&[ex("app/local.conf")], "srv/app/local.conf", false, true),
            (&[ex("app/local.conf")], "app/local.conf", false, true),
            (&[ex("app/local.conf")], "xapp/local.conf", false, false),
            (&[ex("*")], "a/b", false, true),
            (&[ex("a*")], "x/ab/c", false, false),
            (&[ex("/a/**")], "a/b/c", false, true),
            (&[inc("keep.tmp"), ex("*.tmp")], "keep.tmp", false, false),
            (&[inc("keep.tmp"), ex("*.tmp")], "other.tmp", false, true),
            (&[ex("*.tmp"), inc("keep.tmp")], "keep.tmp", false, true),
            (&[ex("[ab].x")], "a.x", false, true),
        ];
        for (rules, path, is_dir, want) in cases {
            let f = Filter::new(rules.to_vec()).unwrap();
            assert_eq!(
                f.excludes(path.as_bytes(), *is_dir),
                *want,
                "{rules:?} on {path}"
            );
        }
    }

    #[test]
    fn wire_form_round_trips_and_refuses_garbage() {
        let f = Filter::new(vec![inc("a b/"), ex("*.tmp"), ex("/x")]).unwrap();
        let g = Filter::decode(&f.encode()).unwrap();
        assert_eq!(g.rules(), f.rules());
        for bad in [&b"* x\n"[..], b"+x\n", b"- \n", b"\xff"] {
            assert!(Filter::decode(bad).is_err(), "{bad:?}");
        }
        assert!(Filter::new(vec![ex("a\nb")]).is_err());
        assert!(Filter::new(vec![ex("[")]).is_err());
    }

    #[test]
    fn files_from_includes_the_paths_their_ancestors_and_nothing_else() {
        let f = Filter::new(files_from_rules(&[
            "srv/app/conf".into(),
            "./top.txt".into(),
        ]))
        .unwrap();
        for (p, d, want) in [
            ("srv", true, false),
            ("srv/app", true, false),
            ("srv/app/conf", true, false),
            ("srv/app/conf/x", false, false),
            ("srv/other", true, true),
            ("top.txt", false, false),
            ("top.txtx", false, true),
            ("else", false, true),
        ] {
            assert_eq!(f.excludes(p.as_bytes(), d), want, "{p}");
        }
        let f = Filter::new(files_from_rules(&["a[1]*".into()])).unwrap();
        assert!(!f.excludes(b"a[1]*", false));
        assert!(f.excludes(b"a1x", false));
    }

    #[test]
    fn rule_files_skip_comments_and_blank_lines() {
        let lines: Vec<_> = rule_lines("# c\n; c\n\n*.tmp\r\ncache/\n").collect();
        assert_eq!(lines, ["*.tmp", "cache/"]);
    }
}
