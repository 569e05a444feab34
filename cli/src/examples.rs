//! The examples each command's help ends with. A test parses every line with the real
//! command line, so an option renamed or removed fails there, not in a user's shell.
//! A line is `cairn ...`, optionally after a pipe, with a `  # comment`.

pub const INIT: &str = "Examples:
  cairn -r /srv/backups init
  cairn -r /srv/backups init --compression max
  cairn -r rest:https://backup.example.com/team/ init --tenant acme";

pub const BACKUP: &str = "Examples:
  cairn backup ~                                   # a home folder, to the default repository
  cairn -r /srv/backups backup /etc /srv/app --tag nightly
  cairn backup --exclude-caches --iexclude '*.tmp' --files-from list.txt
  cairn backup -n /srv/app                         # what would be added, storing nothing
  cairn backup --parent latest /srv/app            # no files cache here: compare with the latest
  pg_dump app | cairn backup --stdin --stdin-filename app.sql
  cairn backup --stdin-from-command --stdin-filename app.dump -- pg_dump -Fc app";

pub const SNAPSHOTS: &str = "Examples:
  cairn snapshots
  cairn snapshots --host web1 --tag nightly --latest 3
  cairn snapshots --compact --json";

pub const LS: &str = "Examples:
  cairn ls latest
  cairn ls latest:/etc/nginx --long
  cairn ls 3f2a9c1b /srv/app";

pub const MOUNT: &str = "Examples:
  cairn mount /mnt/cairn  # until `fusermount3 -u /mnt/cairn`, `umount` or Ctrl-C
  cairn mount /mnt/cairn --host web1 --tag daily
  cairn mount /mnt/cairn --allow-other --refresh 10";

pub const FIND: &str = "Examples:
  cairn find '*.conf'
  cairn find 'invoice-2026-*' --host web1 --json";

pub const DIFF: &str = "Examples:
  cairn diff 3f2a9c1b latest
  cairn diff 3f2a9c1b 7d0e4a52 --json";

pub const DUMP: &str = "Examples:
  cairn dump latest:/etc/nginx/nginx.conf          # a file, to standard output
  cairn dump latest /etc/nginx | tar -t            # a folder, as a tar stream
  cairn dump latest /srv/app/uploads --archive zip";

pub const RESTORE: &str = "Examples:
  cairn restore latest --target /tmp/restore
  cairn restore latest --host web1 --path /etc --target /tmp/etc
  cairn restore 3f2a9c1b --target / --include /etc/nginx";

pub const STATS: &str = "Examples:
  cairn stats
  cairn stats --json";

pub const FORGET: &str = "Examples:
  cairn forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run
  cairn forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  cairn forget --keep-within-pitr 7d --keep-daily 7     # PostgreSQL: any moment of 7 days
  cairn forget 3f2a9c1b";

pub const PRUNE: &str = "Examples:
  cairn prune --dry-run                            # the plan: what would be freed
  cairn prune
  cairn prune --max-unused 0                       # repack until no unused byte is left";

pub const CHECK: &str = "Examples:
  cairn check                                      # structure: index, snapshots, trees, packs
  cairn check --read-data-subset 10%               # and every byte of a tenth of the packs
  cairn check --read-data";

pub const TAG: &str = "Examples:
  cairn tag latest --add release-1.4
  cairn tag 3f2a9c1b 7d0e4a52 --remove nightly";

pub const PG_BASEBACKUP: &str = "Examples:
  cairn pg basebackup                              # PGHOST, PGPORT, PGUSER from the environment
  cairn pg basebackup -h /var/run/postgresql -p 5432 -U postgres";

pub const PG_RESTORE: &str = "Examples:
  cairn pg restore --pgdata /var/lib/postgresql/15/main --latest
  cairn pg restore --pgdata /srv/pg-restore --target-time 2026-12-01T21:39:22Z
  cairn pg restore --pgdata /srv/pg-restore --target-name before-migration --target-action pause";

pub const PG_DRILL: &str = "Examples:
  cairn pg drill                                   # the newest base backup, to the end of the archive
  cairn pg drill --check-sql 'select count(*) from orders' --json";

/// Every example, for the test.
#[cfg(test)]
const ALL: &[&str] = &[
    INIT,
    BACKUP,
    SNAPSHOTS,
    LS,
    MOUNT,
    FIND,
    DIFF,
    DUMP,
    RESTORE,
    STATS,
    FORGET,
    PRUNE,
    CHECK,
    TAG,
    PG_BASEBACKUP,
    PG_RESTORE,
    PG_DRILL,
];

#[cfg(test)]
mod tests {
    /// The examples in the help parse: an option renamed or removed fails here, not in a
    /// user's shell.
    #[test]
    #[allow(clippy::panic)]
    fn every_example_in_the_help_parses() {
        use clap::Parser;
        for text in super::ALL {
            for line in text.lines().skip(1) {
                let command = line.split("  #").next().unwrap_or_default();
                let Some(at) = command.find("cairn ") else {
                    panic!("an example without cairn: {line}");
                };
                // Up to a pipe into another program.
                let command = command[at..].split(" | ").next().unwrap_or_default();
                // Words as a shell splits them: 'quoted' ones kept whole.
                let mut words: Vec<String> = Vec::new();
                let (mut word, mut quoted, mut any) = (String::new(), false, false);
                for c in command.chars() {
                    match c {
                        '\'' => (quoted, any) = (!quoted, true),
                        c if c.is_whitespace() && !quoted => {
                            if any {
                                words.push(std::mem::take(&mut word));
                            }
                            any = false;
                        }
                        c => {
                            word.push(c);
                            any = true;
                        }
                    }
                }
                if any {
                    words.push(word);
                }
                if let Err(e) = crate::args::Cli::try_parse_from(&words) {
                    panic!("{line}: {e}");
                }
            }
        }
    }
}
