//! Recovery targets: what a user asks for, and the settings PostgreSQL reads to reach it.
//!
//! A restore writes its settings into the data directory's `postgresql.auto.conf` (which
//! PostgreSQL reads after `postgresql.conf`, so they win) and creates `recovery.signal`.
//! Times are written in UTC in PostgreSQL's own form (`2026-12-01 21:39:22.5+00`), whatever
//! form they were given in, so the server's `timezone` setting cannot change their meaning.

use super::names::Lsn;
use crate::error::{Error, Result};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    /// The end of the archive.
    #[default]
    Latest,
    /// As soon as the base backup is consistent.
    Immediate,
    Time(jiff::Timestamp),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

/// What PostgreSQL does on reaching the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Promote,
    Pause,
    Shutdown,
}

impl Action {
    fn setting(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// Parses a target time: ISO 8601 with a zone (`2026-12-01T21:39:22.5Z`,
/// `2026-12-01T22:39:22+01:00`), PostgreSQL's form (`2026-12-01 21:39:22.5+00`,
/// `2026-12-01 21:39:22 UTC`), or a time without a zone, read in this machine's zone.
pub fn parse_time(text: &str) -> Result<jiff::Timestamp> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    let iso = t.replacen(' ', "T", 1);
    if let Ok(ts) = iso.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    // PostgreSQL prints offsets as `+00` or `+05:30`; ISO wants minutes.
    if let Some(ts) = with_short_offset(&iso) {
        return Ok(ts);
    }
    if let Some(ts) = super::basebackup::parse_pg_time(t) {
        return Ok(ts);
    }
    if let Ok(civil) = iso.parse::<jiff::civil::DateTime>() {
        if let Ok(z) = civil.to_zoned(jiff::tz::TimeZone::system()) {
            return Ok(z.timestamp());
        }
    }
    Err(Error::invalid(format!(
        "{text:?} is not a time (give e.g. 2026-12-01T21:39:22.5Z or '2026-12-01 21:39:22+00')"
    )))
}

fn with_short_offset(iso: &str) -> Option<jiff::Timestamp> {
    let at = iso.rfind(['+', '-'])?;
    let (head, zone) = iso.split_at(at);
    if !head.contains('T') || zone.len() != 3 {
        return None;
    }
    format!("{head}{zone}:00").parse().ok()
}

/// A time as PostgreSQL reads it, in UTC, to the microsecond.
pub fn pg_time(t: jiff::Timestamp) -> String {
    let z = t.to_zoned(jiff::tz::TimeZone::UTC);
    format!("{}+00", z.strftime("%Y-%m-%d %H:%M:%S%.6f"))
}

/// The settings a restore decides. A base backup of a cluster that was itself restored
/// carries that restore's settings in its postgresql.auto.conf: they are commented out
/// before this restore's are added (see [`replace_recovery_settings`]), since an old target
/// would stop the new recovery early, or clash with its target.
pub const RECOVERY_SETTINGS: [&str; 11] = [
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_end_command",
    "archive_cleanup_command",
];

/// `conf` (the text of a postgresql.auto.conf) with every line that sets one of
/// [`RECOVERY_SETTINGS`] commented out, followed by `settings`.
pub fn replace_recovery_settings(conf: &str, settings: &str) -> String {
    let mut out = String::with_capacity(conf.len() + settings.len());
    for line in conf.lines() {
        let name: String = line
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if RECOVERY_SETTINGS.contains(&name.as_str()) {
            out.push_str("# replaced by cairn pg restore: ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(settings);
    out
}

/// Quotes `s` as one word for the shell PostgreSQL runs restore_command through.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A string literal of postgresql.conf. PostgreSQL's configuration lexer reads a backslash
/// in a quoted value as an escape (`\\` for one backslash, `\n` for a newline) and a quoted
/// value cannot span lines; a quote is doubled.
fn conf_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The recovery settings for a restore: restore_command is `command` (shell words, `%`
/// doubled so PostgreSQL's own `%f`/`%p` are the only substitutions) followed by
/// `wal fetch %f %p`.
pub fn recovery_settings(
    command: &[String],
    target: &Target,
    action: Action,
    timeline: &str,
    exclusive: bool,
) -> String {
    let mut words: Vec<String> = command
        .iter()
        .map(|w| shell_word(w).replace('%', "%%"))
        .collect();
    words.extend(["wal", "fetch", "%f", "%p"].map(String::from));
    let mut lines = vec![format!(
        "restore_command = {}",
        conf_literal(&words.join(" "))
    )];
    let target_line = match target {
        Target::Latest => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(t) => Some(("recovery_target_time", pg_time(*t))),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    if let Some((name, value)) = target_line {
        lines.push(format!("{name} = {}", conf_literal(&value)));
    }
    lines.push(format!(
        "recovery_target_action = {}",
        conf_literal(action.setting())
    ));
    let inclusive =
        !(exclusive && matches!(target, Target::Time(_) | Target::Lsn(_) | Target::Xid(_)));
    lines.push(format!(
        "recovery_target_inclusive = {}",
        if inclusive { "on" } else { "off" }
    ));
    lines.push(format!(
        "recovery_target_timeline = {}",
        conf_literal(timeline)
    ));
    let mut text = String::from("\n# Recovery settings written by cairn pg restore.\n");
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn conf_literals_escape_what_the_configuration_lexer_reads() {
        assert_eq!(conf_literal("plain"), "'plain'");
        assert_eq!(conf_literal("it's"), "'it''s'");
        assert_eq!(conf_literal(r"a\b"), r"'a\\b'");
        assert_eq!(conf_literal("a\nb\rc"), r"'a\nb\rc'");
        // A path with a quote becomes a shell word with a backslash in it.
        let settings = recovery_settings(
            &[
                "/usr/bin/cairn".into(),
                "-r".into(),
                "/srv/o'neil repo".into(),
            ],
            &Target::Latest,
            Action::Promote,
            "latest",
            false,
        );
        let want =
            r"restore_command = '/usr/bin/cairn -r ''/srv/o''\\''''neil repo'' wal fetch %f %p'";
        assert!(settings.contains(want), "{settings}");
    }

    #[test]
    fn times_in_every_accepted_form_mean_the_same_moment() {
        let want = "2026-12-01T21:39:22.5Z".parse::<jiff::Timestamp>().unwrap();
        for t in [
            "2026-12-01T21:39:22.5Z",
            "2026-12-01T22:39:22.5+01:00",
            "2026-12-01 21:39:22.5+00",
            "2026-12-01 22:39:22.5+01",
            "2026-12-01 21:39:22.5 UTC",
        ] {
            assert_eq!(parse_time(t).unwrap(), want, "{t}");
        }
        assert!(parse_time("yesterday").is_err());
        assert_eq!(pg_time(want), "2026-12-01 21:39:22.500000+00");
    }

    #[test]
    fn settings_quote_for_the_shell_and_the_config_file() {
        let cmd: Vec<String> = ["printf", "[%s]", "it's 100%", "a b"]
            .map(String::from)
            .into();
        let s = recovery_settings(
            &cmd,
            &Target::Name("it's".into()),
            Action::Pause,
            "latest",
            false,
        );
        assert!(s.contains("recovery_target_name = 'it''s'"), "{s}");
        assert!(s.contains("recovery_target_action = 'pause'"), "{s}");
        // Read the literal back as PostgreSQL does, substitute as it does, run it as it does.
        let line = s
            .lines()
            .find(|l| l.starts_with("restore_command"))
            .unwrap();
        let literal = line
            .split_once(" = '")
            .unwrap()
            .1
            .strip_suffix('\'')
            .unwrap();
        // The configuration lexer's unescaping: `''` and `\\x` give the next character.
        let mut unescaped = String::new();
        let mut chars = literal.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\'', Some('\'')) | ('\\', Some(_)) => unescaped.extend(chars.next()),
                _ => unescaped.push(c),
            }
        }
        let command = unescaped
            .replace("%f", "F")
            .replace("%p", "P")
            .replace("%%", "%");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[it's 100%][a b][wal][fetch][F][P]"
        );
        let latest = recovery_settings(&cmd, &Target::Latest, Action::Promote, "latest", false);
        assert!(!latest.contains("recovery_target_name"), "{latest}");
        // An earlier restore's settings are commented out, the rest kept.
        let old = "# Do not edit\nwork_mem = '4MB'\nrecovery_target_time = '2026-01-01 00:00:00+00'\n  Restore_Command='x'\n";
        let conf = replace_recovery_settings(old, &latest);
        assert!(conf.contains("\nwork_mem = '4MB'\n"), "{conf}");
        assert!(
            conf.contains("# replaced by cairn pg restore: recovery_target_time"),
            "{conf}"
        );
        assert!(
            conf.contains("# replaced by cairn pg restore:   Restore_Command"),
            "{conf}"
        );
        assert!(conf.ends_with(&latest), "{conf}");
    }
}
