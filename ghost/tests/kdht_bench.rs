//! Issue 13 benchmark (ignored; BENCHMARKS.md has the command): 20 seed.kdht nodes in one
//! process — each a real libp2p node on its own thread, runtime and 127.0.0.1 port, talking
//! TCP + Noise + Yamux — joined through each other; then store throughput (sequential and 16
//! in flight) and lookup latency p50/p99 from random nodes, split into lookups answered over
//! the network and from the local store. Prints one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ghost::seeds::kdht::{parse_peer, KdhtSpec, NodeHandle, Req};
use ghost::seeds::SeedCtx;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn ask(n: &NodeHandle, req: impl FnOnce(ghost::seeds::kdht::Reply) -> Req) -> String {
    let rx = n.send(req).unwrap();
    tokio::time::timeout(Duration::from_secs(70), rx)
        .await
        .expect("node answered in time")
        .expect("node alive")
        .unwrap_or_else(|e| panic!("node said: {e}"))
}

#[test]
#[ignore = "benchmark: cargo test -p ghost --release --test kdht_bench -- --ignored --nocapture"]
fn kdht_twenty_nodes_lookup_latency_and_store_throughput() {
    let nodes_n = env("KDHT_NODES", 20);
    let records = env("KDHT_RECORDS", 500);
    let lookups = env("KDHT_LOOKUPS", 2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nodes: Vec<NodeHandle> = (0..nodes_n)
        .map(|_| {
            NodeHandle::spawn(
                libp2p::identity::Keypair::generate_ed25519(),
                KdhtSpec::default(),
                SeedCtx::detached("seed.kdht"),
            )
            .unwrap()
        })
        .collect();
    let peers: Vec<_> = nodes.iter().map(|n| parse_peer(&n.uri).unwrap()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    rt.block_on(async {
        let t = Instant::now();
        let joins = nodes.iter().map(|n| {
            let p = peers.clone();
            ask(n, move |reply| Req::Join {
                peers: p,
                wait: Duration::from_secs(60),
                reply,
            })
        });
        futures::future::join_all(joins).await;
        let join_ms = t.elapsed().as_millis();
        // Let the bootstrap queries the joins started finish: steady state is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;

        // Sequential stores, each through a random node (quorum = replication = 3).
        let half = records / 2;
        let t = Instant::now();
        for i in 0..half {
            let n = &nodes[next(nodes_n)];
            ask(n, |reply| Req::Store {
                key: format!("key-{i}").into_bytes(),
                value: vec![b'v'; 256],
                ttl: None,
                reply,
            })
            .await;
        }
        let seq_rate = half as f64 / t.elapsed().as_secs_f64();
        // The rest 16 in flight.
        let t = Instant::now();
        let mut i = half;
        while i < records {
            let batch: Vec<_> = (i..(i + 16).min(records))
                .map(|k| {
                    let n = &nodes[next(nodes_n)];
                    ask(n, move |reply| Req::Store {
                        key: format!("key-{k}").into_bytes(),
                        value: vec![b'v'; 256],
                        ttl: None,
                        reply,
                    })
                })
                .collect();
            i += batch.len();
            futures::future::join_all(batch).await;
        }
        let par_rate = (records - half) as f64 / t.elapsed().as_secs_f64();

        let (mut net, mut local) = (Vec::new(), Vec::new());
        for _ in 0..lookups {
            let k = next(records);
            let n = &nodes[next(nodes_n)];
            let t = Instant::now();
            let out = ask(n, |reply| Req::Find {
                key: format!("key-{k}").into_bytes(),
                reply,
            })
            .await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["value"].as_str().unwrap().len(), 256, "{out}");
            if v["from"] == "local" {
                local.push(ms);
            } else {
                net.push(ms);
            }
        }
        let mut all: Vec<f64> = net.iter().chain(local.iter()).copied().collect();
        let line = serde_json::json!({
            "scenario": "kdht",
            "nodes": nodes_n,
            "join_all_ms": join_ms,
            "records": records,
            "store_per_s_sequential": (seq_rate * 10.0).round() / 10.0,
            "store_per_s_16_in_flight": (par_rate * 10.0).round() / 10.0,
            "lookups": lookups,
            "lookup_p50_ms": pct(&mut all, 0.5),
            "lookup_p99_ms": pct(&mut all, 0.99),
            "network_lookups": net.len(),
            "network_p50_ms": pct(&mut net, 0.5),
            "network_p99_ms": pct(&mut net, 0.99),
            "local_p50_ms": pct(&mut local, 0.5),
        });
        println!("{line}");
    });
    for n in nodes {
        rt.block_on(n.shutdown());
    }
}
