//! One contender for Mirage leadership over etcd, as its own process so tests can SIGSTOP
//! and SIGKILL it (tests/tests/ha_etcd.rs). Prints `ready`, then a line per role change
//! (`role leader rev=R`, `role deposed why=…`, `role follower`) and one per fenced write it
//! tries every 100 ms while it believes it leads (`write ok rev=N`, `write refused …`).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mirage::ha::{spawn, ElectorConfig, Etcd, Role};

#[derive(Parser)]
struct Args {
    /// Comma-separated etcd client addresses (host:port).
    #[arg(long)]
    endpoints: String,
    #[arg(long)]
    id: String,
    #[arg(long, default_value = "/mirage/election")]
    key: String,
    /// Each fenced write puts this key = the contender's id.
    #[arg(long, default_value = "/mirage/owner")]
    write_key: String,
    #[arg(long, default_value_t = 3000)]
    ttl_ms: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args));
    Ok(())
}

async fn run(args: Args) {
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_owned).collect();
    let etcd = Arc::new(Etcd::new(endpoints, Duration::from_millis(500)));
    let (h, _task) = spawn(
        etcd,
        ElectorConfig {
            election_key: args.key,
            id: args.id.clone(),
            ttl: Duration::from_millis(args.ttl_ms),
            rejoin_after: Duration::from_millis(500),
        },
    );
    println!("ready id={}", args.id);
    let mut last = String::new();
    loop {
        let now = match h.role() {
            Role::Leader { revision } => format!("role leader rev={revision}"),
            Role::Deposed { why } => format!("role deposed why={why}"),
            Role::Follower { .. } | Role::Candidate => "role follower".to_owned(),
        };
        if now != last {
            println!("{now}");
            last = now;
        }
        if h.is_leader() {
            match h.fenced_put(&[(&args.write_key, &args.id)]).await {
                Ok(rev) => println!("write ok rev={rev}"),
                Err(e) => println!("write refused {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
