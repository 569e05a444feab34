//! restic's `-p FILE` for the password file, beside libpq's `-p PORT` in the `pg` commands.

/// `-p FILE` is the password file wherever restic users put it, before or after the command,
/// except in the `pg` commands, where it is the PostgreSQL port as in libpq's programs. clap
/// cannot give one short option two meanings, so after a command other than `pg` the word
/// `-p` is read as `--password-file` (and `-pFILE` as `--password-file=FILE`), up to a `--`,
/// after which words belong to another program.
pub fn with_restic_p(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    // Most command lines have no -p at all (every `wal push` PostgreSQL runs): they are
    // taken as they are, without building the command's description.
    let has_p = args
        .iter()
        .skip(1)
        .any(|a| a.to_str().is_some_and(|w| w.starts_with("-p")));
    if !has_p {
        return args;
    }
    let cmd = crate::args::Cli::command();
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let long_values: Vec<String> = cmd
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let short_values: Vec<String> = cmd
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_short().map(|c| format!("-{c}")))
        .collect();
    // The command is the first word that is neither an option nor an option's value.
    let mut command_at = None;
    let mut i = 1;
    while i < args.len() {
        let Some(w) = args[i].to_str() else { break };
        if w == "--" {
            break;
        }
        if !w.starts_with('-') {
            command_at = Some(i);
            break;
        }
        let takes_next = !w.contains('=')
            && (long_values.iter().any(|l| l == w) || short_values.iter().any(|s| s == w));
        i += if takes_next { 2 } else { 1 };
    }
    let Some(at) = command_at else { return args };
    if args[at] == "pg" {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut passthrough = false;
    for (k, a) in args.into_iter().enumerate() {
        if k <= at || passthrough {
            out.push(a);
            continue;
        }
        match a.to_str() {
            Some("--") => {
                passthrough = true;
                out.push(a);
            }
            Some("-p") => out.push("--password-file".into()),
            Some(w) if w.starts_with("-p") && w.len() > 2 => {
                out.push(format!("--password-file={}", &w[2..]).into())
            }
            _ => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dash_p_is_the_password_file_except_in_pg_commands_and_after_a_double_dash() {
        let words =
            |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
        let got = |v: &[&str]| super::with_restic_p(words(v));
        assert_eq!(
            got(&["cairn", "-r", "pg", "backup", "-p", "pw", "/etc"]),
            words(&[
                "cairn",
                "-r",
                "pg",
                "backup",
                "--password-file",
                "pw",
                "/etc"
            ])
        );
        assert_eq!(
            got(&["cairn", "snapshots", "-ppw"]),
            words(&["cairn", "snapshots", "--password-file=pw"])
        );
        let pg = ["cairn", "-p", "pw", "pg", "basebackup", "-p", "5432"];
        assert_eq!(got(&pg), words(&pg));
        let after = [
            "cairn",
            "backup",
            "--stdin-from-command",
            "--",
            "pg_dump",
            "-p",
            "5433",
        ];
        assert_eq!(got(&after), words(&after));
    }
}
