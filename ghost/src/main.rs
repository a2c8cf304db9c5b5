use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use ghost::config::{GhostConfig, Policy};
use ghost::seeds::{run_checked, Registry};
use shared::envelope::Args;

// Many small allocations freed on other threads (frames, envelopes, actor messages):
// mimalloc cut glibc malloc's share of the event path (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `ghost --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GIT_COMMIT"), ")");

/// Ghost: the node agent. Hosts seeds, dials its Mirage, runs commands.
#[derive(Parser)]
#[command(name = "ghost", version = VERSION, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the Ghost: seeds, Mirage session, durable outbox, admin boundary.
    Serve(ServeArgs),
    /// List the built-in seeds and their operations.
    Seeds {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// N Ghosts in one process, each a real session with in-memory seeds (load and scale).
    Swarm {
        /// Mirage session address.
        #[arg(long)]
        mirage: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "swarm-")]
        id_prefix: String,
        /// In-memory seeds: seed.flow, seed.kv.
        #[arg(long, value_delimiter = ',', default_value = "seed.flow,seed.kv")]
        seeds: Vec<String>,
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
        /// TLS: the fleet CA.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// mTLS: directory with <ghost_id>.pem and <ghost_id>.key for every swarm Ghost.
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        server_name: String,
        #[arg(long, default_value_t = 256)]
        dial_concurrency: usize,
    },
    /// Run one seed operation locally, without Mirage; exit code is the seed's.
    ///
    /// Example: `ghost exec seed.flow echo msg=hi`
    Exec {
        /// Seed id, e.g. seed.flow, seed.kv, seed.fs.
        seed: String,
        /// Operation the seed declares, e.g. echo.
        operation: String,
        /// Arguments as key=value.
        #[arg(value_parser = parse_kv)]
        args: Vec<(String, String)>,
        /// Config for seed settings (seed.fs root and limits).
        #[arg(long, env = "GHOST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check this host's Ghost setup: config, certificates (expiry, chain, key modes), the
    /// admin port, the data directory, Mirage reachable, clock skew. Prints each problem
    /// with its fix; exit code 1 when there is one.
    Doctor {
        #[arg(long, env = "GHOST_CONFIG")]
        config: Option<PathBuf>,
        /// Mirage's HTTP API (http://host:7000 or https://…), to compare clocks.
        #[arg(long, env = "GHOST_MIRAGE_API")]
        mirage_api: Option<String>,
        /// CA for an https:// --mirage-api (default: tls.ca_file).
        #[arg(long)]
        ca_file: Option<String>,
    },
    /// Print a shell completion script: `ghost completions bash > /etc/bash_completion.d/ghost`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (ghost.1 and one per subcommand) into a directory.
    Man {
        /// Output directory (created when missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see config/ghost.toml); flags below override it.
    #[arg(long, env = "GHOST_CONFIG")]
    config: Option<PathBuf>,
    /// Ghost id.
    #[arg(long = "id", env = "GHOST_ID")]
    ghost_id: Option<String>,
    /// Mirage address host:port; repeat for several, tried in order.
    #[arg(long = "mirage", env = "GHOST_MIRAGE", value_delimiter = ',')]
    mirage: Vec<String>,
    /// Data directory (outbox, dedupe window, seed.fs root).
    #[arg(long, env = "GHOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Admin boundary listen address, e.g. 127.0.0.1:7010 (off by default).
    #[arg(long, env = "GHOST_ADMIN")]
    admin: Option<String>,
    /// Mirage session policy.
    #[arg(long, value_enum)]
    policy: Option<PolicyArg>,
    /// Seeds to host, comma separated (e.g. seed.flow,seed.kv).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Headless,
    Auto,
    Required,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn load(path: Option<&PathBuf>) -> Result<GhostConfig, String> {
    match path {
        Some(p) => GhostConfig::load(p),
        None => Ok(GhostConfig::default()),
    }
}

/// mimalloc madvises its arena MADV_HUGEPAGE: an idle Ghost held 10 MiB of 2 MiB pages it
/// barely used (issue 20). Disabling THP in `main` is too late for the first 4 MiB, faulted
/// by allocations before `main` runs; the flag outlives execve (and was always inherited by
/// seed processes), so a `ghost serve` started without it sets it and runs itself again,
/// same pid, arguments, environment and descriptors: the new image has small pages from its
/// first allocation. Best effort: if anything fails, it carries on with the flag set.
fn small_pages_from_the_start(serve: bool) {
    use std::os::unix::process::CommandExt;
    if rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(true) {
        return;
    }
    if rustix::thread::disable_transparent_huge_pages(true).is_err() || !serve {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // Returns only on failure.
    let _ = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec();
}

fn main() -> ExitCode {
    small_pages_from_the_start(std::env::args_os().nth(1).is_some_and(|a| a == "serve"));
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => {
            shared::init_tracing();
            let mut cfg = match load(a.config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ghost: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(id) = a.ghost_id {
                cfg.ghost_id = id;
            }
            if !a.mirage.is_empty() {
                cfg.mirage.addresses = a.mirage;
            }
            if let Some(d) = a.data_dir {
                cfg.data_dir = d;
            }
            if let Some(ad) = a.admin {
                cfg.admin.listen = ad;
            }
            if let Some(p) = a.policy {
                cfg.mirage.policy = match p {
                    PolicyArg::Headless => Policy::Headless,
                    PolicyArg::Auto => Policy::Auto,
                    PolicyArg::Required => Policy::Required,
                };
            }
            if let Some(s) = a.seeds {
                cfg.seeds = s;
            }
            match ghost::runtime::serve(cfg) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
                Err(e) => {
                    eprintln!("ghost: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Swarm {
            mirage,
            count,
            id_prefix,
            seeds,
            heartbeat_ms,
            ca,
            cert_dir,
            server_name,
            dial_concurrency,
        } => {
            let cfg = ghost::swarm::SwarmConfig {
                mirage,
                count,
                id_prefix,
                seeds,
                heartbeat: std::time::Duration::from_millis(heartbeat_ms.max(100)),
                ca_file: ca,
                cert_dir,
                server_name,
                dial_concurrency,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ghost swarm: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(async {
                tokio::select! {
                    r = ghost::swarm::run(cfg) => r,
                    _ = shared::session::shutdown_signal() => Ok(()),
                }
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ghost swarm: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Seeds { json } => {
            let settings = ghost::runtime::seed_settings(&GhostConfig::default());
            let ids: Vec<String> = ghost::seeds::KNOWN.iter().map(|s| s.to_string()).collect();
            let reg = match Registry::from_ids(&ids, &settings) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ghost: {e}");
                    return ExitCode::from(2);
                }
            };
            let infos = reg.infos();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&infos).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<12} {:<11} {:<13} DESCRIPTION",
                    "SEED", "OPERATION", "ARGS"
                );
                for s in &infos {
                    for o in &s.operations {
                        let args = if o.args.is_empty() {
                            "-".to_owned()
                        } else {
                            o.args.join(",")
                        };
                        println!("{:<12} {:<11} {:<13} {}", s.id, o.name, args, o.description);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Doctor {
            config,
            mirage_api,
            ca_file,
        } => {
            let r =
                ghost::doctor::run(config.as_deref(), mirage_api.as_deref(), ca_file.as_deref());
            ExitCode::from(r.print(&mut std::io::stdout()) as u8)
        }
        Cmd::Completions { shell } => {
            // Rendered first: clap_complete panics on a write error (a closed pipe).
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ghost", &mut buf);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &buf);
            ExitCode::SUCCESS
        }
        Cmd::Man { out } => {
            match std::fs::create_dir_all(&out)
                .and_then(|_| clap_mangen::generate_to(Cli::command(), &out))
            {
                Ok(()) => {
                    println!("wrote man pages to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ghost: man pages into {}: {e}", out.display());
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Exec {
            seed,
            operation,
            args,
            config,
        } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ghost: {e}");
                    return ExitCode::from(2);
                }
            };
            let settings = ghost::runtime::seed_settings(&cfg);
            let mut s = match ghost::seeds::builtin(&seed, &settings) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ghost: {e}");
                    return ExitCode::from(2);
                }
            };
            let args: Args = args.into_iter().collect();
            let out = run_checked(s.as_mut(), &operation, &args);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out.stdout);
            let _ = std::io::stderr().write_all(&out.stderr);
            ExitCode::from(out.exit_code.min(255) as u8)
        }
    }
}
