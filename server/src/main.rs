//! `cairn-server`: serve tenant namespaces over restic's REST protocol, and manage the users
//! file. Exit codes: 0 success, 1 failure at run time (storage, address, users file), 2 bad
//! arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cairn_server::access::Access;
use cairn_server::quota;
use cairn_server::server::{self, ServeOptions, Server};
use cairn_server::storage::NamePolicy;
use cairn_server::users::{self, User, Users};
use cairn_server::verify::NameHash;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-server",
    version,
    about = "Serve Cairn and restic repositories over restic's REST protocol, without keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the tenants of a storage location.
    Serve {
        /// Where objects are stored: a local folder (later also s3:...).
        #[arg(long)]
        storage: String,
        /// Address to listen on, e.g. 127.0.0.1:8000.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        /// The users file (see `cairn-server user add`).
        #[arg(long, env = "CAIRN_SERVER_USERS")]
        users: Option<PathBuf>,
        /// Serve without authentication: anyone reaching the address has full access to every tenant.
        #[arg(long)]
        no_auth: bool,
        /// Largest upload accepted (bytes, or with K/M/G suffix). An upload is held in memory
        /// while its name is checked; restic's packs are at most 128 MiB.
        #[arg(long, default_value = "256MiB")]
        max_object_size: String,
        /// Upload bodies held in memory at once, over all requests; more uploads wait.
        #[arg(long, default_value = "1GiB")]
        max_upload_memory: String,
        /// Accept only object names made with this hash (blake3 or sha256); default: either.
        #[arg(long)]
        name_hash: Option<String>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Append a JSON line per stored snapshot (tenant, name, size, user, time) to this file.
        #[arg(long)]
        receipts: Option<PathBuf>,
        /// A tenant's quota, TENANT=SIZE (e.g. acme=500G); repeat for several tenants.
        #[arg(long = "quota", value_name = "TENANT=SIZE")]
        quotas: Vec<String>,
    },
    /// Manage the users file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user who reaches one tenant (or the metrics).
    Add {
        name: String,
        #[arg(long, env = "CAIRN_SERVER_USERS")]
        users: PathBuf,
        /// read, append, full, or metrics (no tenant).
        #[arg(long)]
        access: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Read the password from this file (its first line); otherwise it is asked for.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a user.
    Remove {
        name: String,
        #[arg(long, env = "CAIRN_SERVER_USERS")]
        users: PathBuf,
    },
    /// List the users with their access and tenant.
    List {
        #[arg(long, env = "CAIRN_SERVER_USERS")]
        users: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            storage,
            listen,
            users,
            no_auth,
            max_object_size,
            max_upload_memory,
            name_hash,
            tls_cert,
            tls_key,
            receipts,
            quotas,
        } => {
            let policy = match name_hash {
                None => NamePolicy::Either,
                Some(h) => NamePolicy::Only(NameHash::parse(&h)?),
            };
            let opts = ServeOptions {
                storage,
                listen,
                users,
                no_auth,
                max_object_size: server::parse_size(&max_object_size)?,
                policy,
                quotas: quotas
                    .iter()
                    .map(|q| quota::parse_quota(q))
                    .collect::<Result<_, _>>()?,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| cairn_server::tls::TlsFiles { cert, key }),
                receipts,
                max_upload_memory: server::parse_size(&max_upload_memory)?,
            };
            serve(&opts)
        }
        Command::User { command } => user(command),
    }
}

fn serve(opts: &ServeOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let server = Server::bind(opts).await?;
        let addr = server.local_addr()?;
        if opts.no_auth {
            tracing::warn!("authentication is off: anyone reaching {addr} has full access");
        }
        // Scripts and tests read the address (the port of :0) from this line.
        let scheme = if server.is_tls() { "https" } else { "http" };
        println!("cairn-server listening on {scheme}://{addr}");
        server.run(server::termination()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add {
            name,
            users: path,
            access,
            tenant,
            password_file,
        } => {
            let access = Access::parse(&access)?;
            let mut all = Users::load_or_empty(&path)?;
            users::validate_user_name(&name)?;
            if all.get(&name).is_some() {
                bail!(
                    "user {name:?} exists in {} (remove it first)",
                    path.display()
                );
            }
            let password = read_password(password_file.as_deref())?;
            let hash = users::hash_password(password.as_bytes())?;
            all.add(User {
                name: name.clone(),
                access,
                tenant,
                hash,
            })?;
            all.save(&path)?;
            eprintln!("added {name}; send SIGHUP to a running server to load it");
        }
        UserCommand::Remove { name, users: path } => {
            let mut all = Users::load(&path)?;
            all.remove(&name)?;
            all.save(&path)?;
            eprintln!("removed {name}; send SIGHUP to a running server to apply it");
        }
        UserCommand::List { users: path } => {
            for u in Users::load(&path)?.iter() {
                println!(
                    "{}\t{}\t{}",
                    u.name,
                    u.access,
                    u.tenant.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn read_password(file: Option<&Path>) -> Result<String> {
    let password = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading password file {}", f.display()))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => {
            let first = rpassword::prompt_password("password: ")?;
            let again = rpassword::prompt_password("password again: ")?;
            if first != again {
                bail!("the passwords differ");
            }
            first
        }
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}
