//! What a backup leaves out: patterns (case-sensitive or not), folders holding a marker
//! file, cache folders, files above a size, and the repository and cache themselves.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// The first bytes of a `CACHEDIR.TAG` file that marks a cache folder (the Cache Directory
/// Tagging Specification); a file without them marks nothing.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Exclusion rules. A pattern with a `/` is matched against the whole absolute path; one
/// without is matched against the entry's name at any depth (`*.tmp`, `node_modules`).
/// `**` crosses directories.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    by_path: Option<GlobSet>,
    by_name: Option<GlobSet>,
    /// A directory containing an entry of one of these names is left out.
    pub if_present: Vec<Vec<u8>>,
    /// Absolute paths always left out, with everything below them: a backup never stores
    /// the repository it writes to or Cairn's own cache (each run would store the previous
    /// run's packs again).
    pub own: Vec<PathBuf>,
    /// Leave out folders holding a `CACHEDIR.TAG` that starts with [`CACHEDIR_SIGNATURE`].
    pub caches: bool,
    /// Leave out files larger than this many bytes.
    pub larger_than: Option<u64>,
    /// The patterns as given (case-insensitive ones after a `(?i)`), to say what they chose:
    /// a restore's in-progress marker records them.
    pub patterns: Vec<String>,
    /// Where the patterns can match, for [`Excludes::may_match_below`].
    reach: Reach,
}

/// Where a set of patterns can match: below any folder, or only on or below the literal
/// leading folders of each pattern matched against whole paths.
#[derive(Debug, Clone, Default)]
struct Reach {
    /// Some pattern may match at any depth (a name pattern, a case-insensitive path
    /// pattern, or a path pattern that does not start with `/`).
    anywhere: bool,
    /// Each absolute path pattern's leading components up to the first one with a
    /// wildcard, and whether the whole pattern is that literal path.
    prefixes: Vec<(PathBuf, bool)>,
}

impl Reach {
    fn add(&mut self, pattern: &str, case_insensitive: bool) {
        // A name pattern has no `/` at all, so it does not start with one either.
        if case_insensitive || !pattern.starts_with('/') {
            self.anywhere = true;
            return;
        }
        let wild = |c: &str| c.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let mut prefix = PathBuf::from("/");
        let mut literal = true;
        for component in pattern.split('/').filter(|c| !c.is_empty()) {
            if wild(component) {
                literal = false;
                break;
            }
            prefix.push(component);
        }
        self.prefixes.push((prefix, literal));
    }
}

/// Patterns split into those matched against whole paths and those matched against names.
struct Sets {
    by_path: GlobSetBuilder,
    by_name: GlobSetBuilder,
    paths: usize,
    names: usize,
    reach: Reach,
}

impl Sets {
    fn new() -> Sets {
        Sets {
            by_path: GlobSetBuilder::new(),
            by_name: GlobSetBuilder::new(),
            paths: 0,
            names: 0,
            reach: Reach::default(),
        }
    }

    fn add(&mut self, pattern: &str, case_insensitive: bool) -> Result<()> {
        let p = pattern.trim();
        if p.is_empty() || p.starts_with('#') {
            return Ok(());
        }
        let trimmed = p.trim_end_matches('/');
        self.reach.add(trimmed, case_insensitive);
        let glob: Glob = GlobBuilder::new(trimmed)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| Error::invalid(format!("exclude pattern {p:?}: {e}")))?;
        if trimmed.contains('/') {
            self.by_path.add(glob);
            self.paths += 1;
        } else {
            self.by_name.add(glob);
            self.names += 1;
        }
        Ok(())
    }

    fn build(self) -> Result<(Option<GlobSet>, Option<GlobSet>, Reach)> {
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>> {
            if n == 0 {
                return Ok(None);
            }
            b.build()
                .map(Some)
                .map_err(|e| Error::invalid(format!("exclude patterns: {e}")))
        };
        Ok((
            build(self.by_path, self.paths)?,
            build(self.by_name, self.names)?,
            self.reach,
        ))
    }
}

impl Excludes {
    pub fn new(patterns: &[String], if_present: &[String]) -> Result<Self> {
        Self::with_case_insensitive(patterns, &[], if_present)
    }

    /// Rules from case-sensitive `patterns`, case-insensitive `ipatterns` (`--iexclude`)
    /// and marker names.
    pub fn with_case_insensitive(
        patterns: &[String],
        ipatterns: &[String],
        if_present: &[String],
    ) -> Result<Self> {
        let mut sets = Sets::new();
        for p in patterns {
            sets.add(p, false)?;
        }
        for p in ipatterns {
            sets.add(p, true)?;
        }
        let (by_path, by_name, reach) = sets.build()?;
        let mut given: Vec<String> = patterns.to_vec();
        given.extend(ipatterns.iter().map(|p| format!("(?i){p}")));
        Ok(Excludes {
            by_path,
            by_name,
            if_present: if_present.iter().map(|s| s.as_bytes().to_vec()).collect(),
            patterns: given,
            reach,
            ..Excludes::default()
        })
    }

    /// Reads patterns from a file: one per line, `#` starts a comment line.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading exclude file {}", path.display()), e))?;
        Ok(text
            .lines()
            .map(str::to_string)
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect())
    }

    /// Leaves out `path` (made absolute and resolved when it exists) and what is below it.
    pub fn leave_out(&mut self, path: &Path) {
        let path = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        self.own.push(path);
    }

    /// Whether anything strictly below folder `dir` (an absolute path) may match. `false` only
    /// when no pattern can match there, whatever the folder holds: a restore with
    /// `--include` does not enter such a folder.
    pub fn may_match_below(&self, dir: &Path) -> bool {
        self.reach.anywhere
            || self.own.iter().any(|o| o.starts_with(dir) && o != dir)
            || self
                .reach
                .prefixes
                .iter()
                .any(|(prefix, literal)| match literal {
                    // Only the path itself matches: it must lie below `dir`.
                    true => prefix.starts_with(dir) && prefix != dir,
                    // A wildcard after the prefix may match at any depth below it.
                    false => prefix.starts_with(dir) || dir.starts_with(prefix),
                })
    }

    pub fn excluded(&self, path: &Path) -> bool {
        if self.own.iter().any(|o| o == path) {
            return true;
        }
        if let Some(set) = &self.by_path {
            if set.is_match(path) {
                return true;
            }
        }
        if let (Some(set), Some(name)) = (&self.by_name, path.file_name()) {
            if set.is_match(Path::new(name)) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exclude_rules() {
        let ex = Excludes::new(
            &[
                "*.tmp".into(),
                "/data/cache/**".into(),
                "node_modules".into(),
            ],
            &[],
        )
        .unwrap();
        assert!(ex.excluded(Path::new("/a/b/x.tmp")));
        assert!(ex.excluded(Path::new("/data/cache/x/y")));
        assert!(ex.excluded(Path::new("/src/node_modules")));
        assert!(!ex.excluded(Path::new("/data/keep/x")));
        assert!(!ex.excluded(Path::new("/a/tmp")));
        assert!(!ex.excluded(Path::new("/a/b/X.TMP")));
    }

    #[test]
    fn folders_no_pattern_can_reach_are_told() {
        let inc = Excludes::new(&["/global/pg_control".into(), "/srv/*/docs".into()], &[]).unwrap();
        for dir in ["/", "/global", "/srv", "/srv/a", "/srv/a/docs/x"] {
            assert!(inc.may_match_below(Path::new(dir)), "{dir}");
        }
        for dir in [
            "/global/pg_control",
            "/glob",
            "/globalx",
            "/base",
            "/base/5",
            "/srvx",
        ] {
            assert!(!inc.may_match_below(Path::new(dir)), "{dir}");
        }
        // Name patterns, case-insensitive and relative ones match at any depth.
        for pattern in ["pg_control", "data/x"] {
            let inc = Excludes::new(&[pattern.into()], &[]).unwrap();
            assert!(inc.may_match_below(Path::new("/base/5")), "{pattern}");
        }
        let inc =
            Excludes::with_case_insensitive(&[], &["/Global/PG_CONTROL".into()], &[]).unwrap();
        assert!(inc.may_match_below(Path::new("/global")));
        assert!(inc.may_match_below(Path::new("/base")));
        // A bracket, brace, question mark or escape ends the literal prefix too.
        for pattern in ["/a/[bc]/d", "/a/{b,c}/d", "/a/?/d", "/a/\\b/d"] {
            let inc = Excludes::new(&[pattern.into()], &[]).unwrap();
            assert!(inc.may_match_below(Path::new("/a/b")), "{pattern}");
            assert!(!inc.may_match_below(Path::new("/z")), "{pattern}");
        }
    }

    #[test]
    fn case_insensitive_rules() {
        let ex = Excludes::with_case_insensitive(
            &["*.log".into()],
            &["*.jpg".into(), "/Photos/Raw/**".into()],
            &[],
        )
        .unwrap();
        assert!(ex.excluded(Path::new("/a/B.JPG")));
        assert!(ex.excluded(Path::new("/photos/raw/x")));
        assert!(ex.excluded(Path::new("/a/x.log")));
        assert!(!ex.excluded(Path::new("/a/x.LOG")));
    }
}
