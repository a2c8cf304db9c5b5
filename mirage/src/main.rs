use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mirage: the fleet orchestrator.
#[derive(Parser)]
#[command(name = "mirage", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run Mirage: Ghost sessions, intents, locks, reports, the HTTP API.
    Serve(ServeArgs),
    /// Wire protocol tools for operators.
    Wire {
        #[command(subcommand)]
        cmd: WireCmd,
    },
}

#[derive(Subcommand)]
enum WireCmd {
    /// Decode a frame (or a stream of frames) or a handshake line and print it as JSON.
    ///
    /// Input may be hex text (whitespace ignored) or raw bytes. Prints one JSON document per
    /// frame or line; exit code 1 when anything fails to decode.
    Decode {
        /// Treat the input as NDJSON handshake lines (detected automatically when it starts
        /// with `{`).
        #[arg(long)]
        ndjson: bool,
        /// File to read; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config (see config/mirage.toml); flags override it.
    #[arg(long, env = "MIRAGE_CONFIG")]
    config: Option<PathBuf>,
    /// Ghost session listener, ip:port.
    #[arg(long, env = "MIRAGE_LISTEN")]
    listen: Option<String>,
    /// HTTP API listener, ip:port ("" turns it off).
    #[arg(long, env = "MIRAGE_API_LISTEN")]
    api: Option<String>,
    /// Data directory (SQLite database).
    #[arg(long, env = "MIRAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The co-located Ghost preferred by `on = "one"` steps.
    #[arg(long)]
    local_ghost: Option<String>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve(a: ServeArgs) -> ExitCode {
    init_tracing();
    let mut cfg = match a.config.as_ref() {
        Some(p) => match mirage::config::MirageConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mirage: {e}");
                return ExitCode::from(2);
            }
        },
        None => mirage::config::MirageConfig::default(),
    };
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(l) = a.api {
        cfg.api.listen = l;
    }
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(g) = a.local_ghost {
        cfg.local_ghost = g;
    }
    if let Ok(t) = std::env::var("MIRAGE_TOKEN") {
        if !t.is_empty() {
            cfg.api.token = t;
        }
    }
    match mirage::server::serve(cfg) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(c) => ExitCode::from(c.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("mirage: {e}");
            ExitCode::from(2)
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> std::io::Result<Vec<u8>> {
    // Bounded: a frame is at most 8 MiB of payload plus headers; hex doubles it.
    const MAX_INPUT: u64 = 20 * 1024 * 1024;
    let mut buf = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(p)?
                .take(MAX_INPUT)
                .read_to_end(&mut buf)?;
        }
        _ => {
            std::io::stdin().take(MAX_INPUT).read_to_end(&mut buf)?;
        }
    }
    Ok(buf)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Wire {
            cmd: WireCmd::Decode { ndjson, file },
        } => {
            let input = match read_input(file.as_ref()) {
                Ok(b) => b,
                Err(e) => {
                    let name = file
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "stdin".into());
                    eprintln!("mirage wire decode: cannot read {name}: {e}");
                    return ExitCode::from(2);
                }
            };
            let (docs, ok) = mirage::wire_tool::decode(&input, ndjson);
            let mut out = std::io::stdout().lock();
            for d in docs {
                let _ = writeln!(out, "{d}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
