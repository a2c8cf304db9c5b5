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
